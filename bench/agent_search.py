"""The agent's search on a real task, against random search at equal evaluations.

From a study's finished runs (the frontier studies' agent arm): per search round (a round in
which candidates are scored) and seed, the candidates' mean and best reward of the agent
(``arsp``) and of random search (``arsp_random_search``), which score the same number of
candidates per round on the same reward images from the same dense start under the same budget
schedule. x is the candidate evaluations so far (P per search round). Rewards of different
rounds are not comparable (the budget tightens round by round), so the methods are compared
within each round: the paired difference (agent minus random search, per seed) with a 95%
t-interval over seeds. A learning agent's candidates should pull ahead as evaluations grow; its
mean reward is the policy's, random search's the incumbent's neighbourhood.

  python bench/agent_search.py --study=results/frontier_hourglass --sparsity=0.98

Writes bench/results/agent_search_<study>_<sparsity>.json and .png (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchutil import cpu_model  # noqa: E402

KEYS = ("candidate_reward_mean", "candidate_reward_max")


def search_rounds(results: dict) -> list[dict]:
  """The rounds of a run in which candidates were scored, in order."""
  rounds = (results.get("history") or {}).get("rounds") or []
  return [r for r in rounds if float((r.get("controller") or {}).get("candidate_reward_std", 0))]


def load_runs(study: str, method: str, sparsity: float) -> dict[int, dict]:
  """``{seed: results.json}`` of the method's finished runs at the sparsity."""
  runs = os.path.join(study, "runs")
  prefix = f"{method}_sp{sparsity:g}_s"
  out = {}
  for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
    path = os.path.join(runs, name, "results.json")
    if name.startswith(prefix) and name[len(prefix) :].isdigit() and os.path.exists(path):
      with open(path) as f:
        out[int(name[len(prefix) :])] = json.load(f)
  return out


def model_of(results: dict) -> str:
  """The run's model and its hidden widths, if any (e.g. ``mlp (1024, 512, 10)``)."""
  cfg = results.get("config", {})
  hidden = (cfg.get("model_kwargs") or {}).get("hidden")
  return f"{cfg.get('model', '?')}" + (f" {tuple(hidden)}" if hidden else "")


def curves(runs: dict[int, dict]) -> dict:
  """Per seed: evaluations so far and the candidates' mean and best reward, per search round."""
  out = {}
  for seed, res in runs.items():
    rounds = search_rounds(res)
    pop = int(res["config"]["arsp"]["population"])
    out[seed] = {
      "evaluations": [pop * (i + 1) for i in range(len(rounds))],
      **{k: [float(r["controller"][k]) for r in rounds] for k in KEYS},
    }
  return out


def paired(a: dict, b: dict) -> dict:
  """Per search round: mean over the shared seeds of a minus b, with a 95% t-interval (none
  from one seed: ``ci95`` is None)."""
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return {"seeds": seeds}
  n = min(len(x[s]["evaluations"]) for x in (a, b) for s in seeds)
  out = {"seeds": seeds, "evaluations": a[seeds[0]]["evaluations"][:n]}
  for k in KEYS:
    d = np.array([np.subtract(a[s][k][:n], b[s][k][:n]) for s in seeds])
    out[k] = {"mean": d.mean(0).tolist(), "ci95": None}
    if len(seeds) > 1:
      half = stats.t.ppf(0.975, len(seeds) - 1) * d.std(axis=0, ddof=1) / np.sqrt(len(seeds))
      out[k]["ci95"] = [(d.mean(0) - half).tolist(), (d.mean(0) + half).tolist()]
  return out


def plot(result: dict, path: str) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  methods = result["methods"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, k in zip(axes[:2], KEYS):
    for m, color in zip(methods, ("C0", "C1")):
      for i, (_seed, c) in enumerate(sorted(result["curves"][m].items())):
        ax.plot(c["evaluations"], c[k], color=color, alpha=0.6, lw=1,
                label=m if i == 0 else None)  # fmt: skip
    ax.set(xlabel="candidate evaluations", ylabel=k.replace("_", " "), title=k.split("_")[-1])
    ax.legend()
  d = result.get("paired", {})
  if "evaluations" in d:
    x = d["evaluations"]
    for k, color in zip(KEYS, ("C2", "C3")):
      axes[2].plot(x, d[k]["mean"], color=color, label=k.split("_")[-1])
      if d[k]["ci95"] is not None:
        axes[2].fill_between(x, *d[k]["ci95"], color=color, alpha=0.2)
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].legend()
  axes[2].set(
    xlabel="candidate evaluations",
    title=f"{' − '.join(methods)}, paired by seed" if len(methods) == 2 else "",
  )
  fig.suptitle(f"{result['study']} at sparsity {result['sparsity']:g}: the search's rewards")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--study", required=True, help="a study directory (with runs/)")
  ap.add_argument("--sparsity", type=float, required=True)
  ap.add_argument("--methods", default="arsp,arsp_random_search", help="one or two methods")
  ap.add_argument("--out", default="bench/results")
  args = ap.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  if not os.path.isdir(os.path.join(args.study, "runs")):
    print(f"error: {args.study} has no runs/ directory (not a study)", file=sys.stderr)
    return 2
  runs = {m: load_runs(args.study, m, args.sparsity) for m in methods}
  missing = [m for m in methods if not runs[m]]
  if missing:
    print(
      f"error: no finished run of {', '.join(missing)} at sparsity {args.sparsity:g} in "
      f"{args.study} (its agent arm may not have run yet)",
      file=sys.stderr,
    )
    return 2
  result = {
    "benchmark": "agent_search",
    "study": os.path.basename(os.path.normpath(args.study)),
    "sparsity": args.sparsity,
    "methods": methods,
    "model": model_of(next(iter(runs[methods[0]].values()))),
    "curves": {m: curves(runs[m]) for m in methods},
    "settings": {**vars(args), "cpu": cpu_model()},
  }
  if len(methods) == 2:
    result["paired"] = paired(*(result["curves"][m] for m in methods))
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f"agent_search_{result['study']}_{args.sparsity:g}")
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=1)
  plot(result, stem + ".png")
  print(f"{stem}.json, {stem}.png: {', '.join(f'{m} seeds {sorted(runs[m])}' for m in methods)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
