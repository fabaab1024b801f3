"""Whole-run wall time of ARSP against a rule (``gmp``) at the shipped defaults.

One dense start per model (the default protocol's dense phase, timed once: it is the same work
for every method), then prune + fine-tune runs from it, the methods interleaved within each
repeat (the order alternates between repeats) on the same machine. A run is ``train.py``'s own
loop (``loop.run``) with the package defaults but ``--method`` and ``--init_from``. Reported per
model: the whole run (dense start + pruning + fine-tuning) of each method, the ratio to ``gmp``
(per repeat, then the median), the pruning phase's per-step overhead against ``gmp``'s pruning
phase, and the cost of one search round (the extra pruning-phase time over the rounds that
scored candidates).

  python bench/run_cost.py                         # default MLP and deep MLP, 2 repeats
  python bench/run_cost.py --models=deep --repeats=3 --methods=gmp,arsp,arsp_fixed

Writes bench/results/run_cost.json (settings, CPU, every run's timings). Pause other jobs first
(the numbers are wall times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arsp_jax import configs  # noqa: E402
from arsp_jax.configs import fashion_mnist_deep  # noqa: E402
from arsp_jax.train import loop  # noqa: E402
from bench.benchutil import cpu_model  # noqa: E402

MODELS = {"mlp": {}, "deep": {"model_kwargs.hidden": fashion_mnist_deep.HIDDEN}}


def _config(model: str, over: dict):
  cfg = configs.apply_overrides(
    configs.get_config("fashion_mnist"), {**MODELS[model], "num_devices": 1, **over}
  )
  configs.validate(cfg)
  return cfg


def _phase_seconds(res: dict) -> dict:
  out: dict = {}
  for e in res["history"]["epochs"]:
    out[e["phase"]] = out.get(e["phase"], 0.0) + float(e["seconds"])
  return out


def timed_run(cfg, workdir: str) -> dict:
  t = time.perf_counter()
  res = loop.run(cfg, workdir, progress=False, log=lambda msg: None)
  wall = time.perf_counter() - t
  rounds = res["history"]["rounds"]
  searched = sum(1 for r in rounds if float(r["controller"].get("candidate_reward_std", 0)) > 0)
  return {
    "wall_s": wall,
    "phase_s": _phase_seconds(res),
    "rounds": len(rounds),
    "search_rounds": searched,
    "test_accuracy": res["test_accuracy"],
  }


def run_model(model: str, args, scratch: str) -> dict:
  dense_dir = os.path.join(scratch, f"{model}_dense")
  dense = timed_run(_config(model, {"method": "dense", "seed": args.seed}), dense_dir)
  print(f"[{model}] dense start {dense['wall_s']:.0f} s", flush=True)
  methods = args.methods.split(",")
  runs: dict = {m: [] for m in methods}
  for rep in range(args.repeats):
    order = methods if rep % 2 == 0 else methods[::-1]
    for m in order:
      wd = os.path.join(scratch, f"{model}_{m}_{rep}")
      cfg = _config(model, {"method": m, "seed": args.seed, "init_from": dense_dir})
      runs[m].append(timed_run(cfg, wd))
      shutil.rmtree(wd, ignore_errors=True)
      r = runs[m][-1]
      print(f"[{model}] repeat {rep + 1}: {m} {r['wall_s']:.0f} s (pruning phase "
            f"{r['phase_s'].get('arsp', 0):.0f} s, {r['search_rounds']}/{r['rounds']} rounds "
            f"searched)", flush=True)  # fmt: skip
  ref = runs["gmp"]
  out = {"model": model, "dense_start": dense, "runs": runs, "methods": {}}
  for m in methods:
    whole = [dense["wall_s"] + r["wall_s"] for r in runs[m]]
    ratio = [(dense["wall_s"] + r["wall_s"]) / (dense["wall_s"] + g["wall_s"])
             for r, g in zip(runs[m], ref)]  # fmt: skip
    step = [r["phase_s"]["arsp"] / g["phase_s"]["arsp"] for r, g in zip(runs[m], ref)]
    per_round = [
      (r["phase_s"]["arsp"] - g["phase_s"]["arsp"]) / r["search_rounds"]
      for r, g in zip(runs[m], ref)
      if r["search_rounds"]
    ]
    out["methods"][m] = {
      "whole_run_s": float(np.median(whole)),
      "whole_run_ratio_to_gmp": float(np.median(ratio)),
      "whole_run_ratios": ratio,
      "pruning_phase_ratio_to_gmp": float(np.median(step)),
      "search_round_extra_s": float(np.median(per_round)) if per_round else None,
    }
  return out


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--models", default="mlp,deep")
  ap.add_argument("--methods", default="gmp,arsp")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="bench/results/run_cost.json")
  args = ap.parse_args()
  if "gmp" not in args.methods.split(","):
    sys.exit("--methods must include gmp (the reference of the ratios)")
  a = configs.get_config("fashion_mnist").arsp
  shipped = {k: a[k] for k in ("population", "recovery_steps", "recovery_batch", "reward_size",
                               "search_after_budget", "prune_every", "epochs", "target_sparsity")}  # fmt: skip
  rows = []
  with tempfile.TemporaryDirectory(prefix="run_cost_") as scratch:
    for model in args.models.split(","):
      rows.append(run_model(model, args, scratch))
      for m, s in rows[-1]["methods"].items():
        print(f"[{model}] {m}: whole run {s['whole_run_s']:.0f} s, "
              f"{s['whole_run_ratio_to_gmp']:.2f}x gmp; pruning phase "
              f"{s['pruning_phase_ratio_to_gmp']:.2f}x", flush=True)  # fmt: skip
  out = {
    "benchmark": "run_cost",
    "settings": {
      **vars(args),
      "cpu": cpu_model(),
      "jax": jax.__version__,
      "shipped": shipped,
      "load_average_at_end": os.getloadavg(),
    },  # fmt: skip
    "rows": rows,
  }
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print(f"-> {args.out}")


if __name__ == "__main__":
  main()
