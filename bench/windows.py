"""One program call per step against compiled multi-step windows (``steps_per_window``).

Times, interleaved in one process over the same batches: the dense step called once per step
and as windows of ``--window`` steps (one ``lax.scan`` program per window); the pruning phase
with one program call per step (the round chosen by the host) and as windows of one pruning
interval (the round at the start of each window, then ``prune_every - 1`` plain steps, in one
program). The ARSP-phase overhead is the ratio to the dense step of the same form.

  python bench/windows.py                       # Fashion-MNIST MLP, batch 256, P = 1
  python bench/windows.py --population=16 --out=bench/results/windows_mlp_p16.json

Writes bench/results/windows_<model>_p<P>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--model", default="mlp")
  ap.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist or synthetic")
  ap.add_argument("--batch_size", type=int, default=256)
  ap.add_argument("--prune_every", type=int, default=50)
  ap.add_argument("--population", type=int, default=1, help="candidates the agent scores")
  ap.add_argument("--window", type=int, default=0, help="dense window (0: prune_every)")
  ap.add_argument("--intervals", type=int, default=2, help="pruning intervals per repeat")
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np

  from arsp_jax import configs as config_lib
  from arsp_jax.train import loop
  from arsp_jax.train import step as step_lib
  from bench import benchutil

  every = args.prune_every
  window = args.window or every
  cfg = config_lib.apply_overrides(
    config_lib.get_config(args.dataset),
    {
      "model": args.model,
      "batch_size": args.batch_size,
      "arsp.prune_every": every,
      "arsp.population": args.population,
      "num_devices": 1,
    },
  )
  pipe = loop.Pipeline(cfg, "/tmp/arsp_bench", progress=False)
  host = []
  for b in pipe.dataset.train_batches(0, cfg.batch_size, 0):
    host.append(b)
    if len(host) == max(every, window):
      break
  singles = [step_lib.shard_batch(b, pipe.mesh) for b in host]
  stack = lambda bs: step_lib.shard_window(next(step_lib.stack_windows(bs, [len(bs)])), pipe.mesh)
  dense_window, arsp_window = stack(host[:window]), stack(host[:every])
  _, dsteps = pipe.steps("dense")
  tx, asteps = pipe.steps("arsp")
  aux = pipe.aux_batches()
  states = {
    "dense": pipe.fresh_state("dense"),
    "arsp": step_lib.replicate(
      step_lib.start_phase(pipe.fresh_state("dense"), "arsp", tx, pipe.info, pipe.rc), pipe.mesh
    ),
  }

  def at_step(state, k):
    return state.replace(step=jax.device_put(np.int32(k), state.step.sharding))

  def dense_steps(n):
    s = states["dense"]
    for i in range(n):
      s, m = dsteps.train()(s, singles[i % len(singles)])
    jax.block_until_ready(m["loss"])
    states["dense"] = s

  def dense_windows(n):
    s = states["dense"]
    for _ in range(n // window):
      s, m = dsteps.train(window=True)(s, dense_window)
    jax.block_until_ready(m["loss"])
    states["dense"] = s

  def arsp_steps(n):
    s = at_step(states["arsp"], every)  # a round at the first step of every interval
    for i in range(n):
      s, m = asteps.arsp(with_round=step_lib.round_due(every + i, every))(
        s, singles[i % every], aux
      )
    jax.block_until_ready(m["loss"])
    states["arsp"] = s

  def arsp_windows(n):
    s = at_step(states["arsp"], every)
    for _ in range(n // every):
      s, m = asteps.arsp(with_round=True, window=True)(s, arsp_window, aux)
    jax.block_until_ready(m["loss"])
    states["arsp"] = s

  def plain_steps(n):  # the pruning-phase step without a round: what every step carries
    s = at_step(states["arsp"], 1)
    for i in range(n):
      s, m = asteps.arsp(with_round=False)(s, singles[i % every], aux)
    jax.block_until_ready(m["loss"])
    states["arsp"] = s

  def round_steps(n):  # the step with the round
    s = states["arsp"]
    for i in range(n):
      s, m = asteps.arsp(with_round=True)(at_step(s, every), singles[i % every], aux)
    jax.block_until_ready(m["loss"])
    states["arsp"] = s

  n = every * args.intervals
  n_dense = max(window, (n // window) * window)
  fns = {
    "dense_per_step": (dense_steps, n_dense),
    "dense_windows": (dense_windows, n_dense),
    "arsp_per_step": (arsp_steps, n),
    "arsp_windows": (arsp_windows, n),
    "plain_step": (plain_steps, 20),
    "round_step": (round_steps, 2),
  }
  first = {}
  for name, (fn, _) in fns.items():  # compile everything first
    t = time.perf_counter()
    fn(window if name == "dense_windows" else (every if "arsp" in name else 2))
    first[name] = time.perf_counter() - t
  times = {name: [] for name in fns}
  for _ in range(args.repeats):
    for name, (fn, count) in fns.items():
      t = time.perf_counter()
      fn(count)
      times[name].append((time.perf_counter() - t) / count)
  med = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
  # Ratios within each repeat (the machine's speed drifts between repeats), then their median.
  ratio = lambda a, b: float(np.median(np.asarray(times[a]) / np.asarray(times[b])))
  out = {
    "benchmark": "windows",
    "settings": vars(args) | {"window": window},
    "model": args.model,
    "dataset": pipe.dataset.name,
    "prunable_connections": pipe.info.total,
    "score": cfg.arsp.score,
    "calib_size": cfg.arsp.calib_size,
    "reward_size": cfg.arsp.reward_size,
    "recovery_steps": cfg.arsp.recovery_steps,
    "ms_per_step": med,
    "ms_all_repeats": {k: [1e3 * x for x in v] for k, v in times.items()},
    "ratios": "medians over the repeats of the ratio within each repeat",
    "windows_vs_per_step_dense": ratio("dense_windows", "dense_per_step"),
    "windows_vs_per_step_arsp": ratio("arsp_windows", "arsp_per_step"),
    "arsp_overhead_per_step": ratio("arsp_per_step", "dense_per_step") - 1.0,
    "arsp_overhead_windows": ratio("arsp_windows", "dense_windows") - 1.0,
    "carried_per_step": ratio("plain_step", "dense_per_step") - 1.0,
    "round_cost_ms": med["round_step"] - med["plain_step"],
    "first_calls_seconds": first,
    "load_average_at_end": list(os.getloadavg()),
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
    "cpu": benchutil.cpu_model(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }
  path = args.out or os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "results",
    f"windows_{args.model}_p{args.population}.json",
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(f"{args.model} batch {args.batch_size}, P = {args.population}, ms per step (median):")
  for name, v in med.items():
    print(f"  {name:16s} {v:9.2f}")
  print(
    f"  windows vs per step: dense {out['windows_vs_per_step_dense']:.3f}x, ARSP phase "
    f"{out['windows_vs_per_step_arsp']:.3f}x (time ratios, medians over the repeats)"
  )
  print(
    f"  ARSP-phase overhead: per step {100 * out['arsp_overhead_per_step']:+.1f}%, windows "
    f"{100 * out['arsp_overhead_windows']:+.1f}%; carried by every step "
    f"{100 * out['carried_per_step']:+.1f}%; the round {out['round_cost_ms']:.0f} ms"
  )
  print(f"  -> {path}")


if __name__ == "__main__":
  main()
