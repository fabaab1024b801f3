"""The cost of the agent's population rounds: one pruning interval of the ARSP step vs the
dense step, for several population sizes P, recovery steps K and chunk sizes C.

Each setting is compiled, warmed up (both branches of the round's cond), then timed over
whole pruning intervals (``prune_every`` steps, one round included), interleaved with the same
number of dense steps; the ratio of the best of ``--repeats`` is reported.

  python bench/agent_cost.py                          # Fashion-MNIST MLP, batch 256, 1 device
  python bench/agent_cost.py --settings=16x20x16,8x10x8
  python bench/agent_cost.py --settings=16x20x16x1000   # a 4th field: reward images

Writes bench/results/agent_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arsp_jax import configs  # noqa: E402
from arsp_jax.train import loop  # noqa: E402
from arsp_jax.train import step as step_lib  # noqa: E402
from bench.benchutil import cpu_model  # noqa: E402


def time_setting(population, recovery_steps, chunk, repeats, reward_size=None):
  over = {"arsp.population": population, "arsp.recovery_steps": recovery_steps,
          "arsp.eval_chunk": chunk, "num_devices": 1}  # fmt: skip
  if reward_size:
    over["arsp.reward_size"] = reward_size
  cfg = configs.apply_overrides(configs.get_config("fashion_mnist"), over)
  pipe = loop.Pipeline(cfg, "/tmp/unused", progress=False)
  n = cfg.arsp.prune_every
  batches = []
  for b in pipe.dataset.train_batches(0, cfg.batch_size, 0):
    batches.append(step_lib.shard_batch(b, pipe.mesh))
    if len(batches) == n:
      break
  tx, arsp = pipe.steps("arsp")
  _, dense = pipe.steps("dense")
  state = step_lib.replicate(
    step_lib.start_phase(pipe.fresh_state("dense"), "arsp", tx, pipe.info, pipe.rc), pipe.mesh
  )
  dstate, aux = pipe.fresh_state("dense"), pipe.aux_batches()
  done = 0  # the phase's updates so far: the host picks the step with the round when one is due

  def arsp_step(state, batch):
    nonlocal done
    state, m = arsp.arsp(with_round=step_lib.round_due(done, n))(state, batch, aux)
    done += 1
    return state, m

  for i in range(n + 1):  # warm-up: a round and the steps without one
    state, m = arsp_step(state, batches[i % n])
  dstate, dm = dense.train()(dstate, batches[0])
  jax.block_until_ready((m["loss"], dm["loss"]))
  t_arsp, t_dense = [], []
  for _ in range(repeats):
    t = time.perf_counter()
    for i in range(n):
      dstate, dm = dense.train()(dstate, batches[i])
    jax.block_until_ready(dm["loss"])
    t_dense.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
      state, m = arsp_step(state, batches[i])
    jax.block_until_ready(m["loss"])
    t_arsp.append(time.perf_counter() - t)
  return {"population": population, "recovery_steps": recovery_steps, "eval_chunk": chunk,
          "reward_size": cfg.arsp.reward_size, "interval_steps": n, "interval_arsp_s": min(t_arsp), "interval_dense_s": min(t_dense),
          "ratio": min(t_arsp) / min(t_dense)}  # fmt: skip


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument(
    "--settings", default="16x20x16,16x20x16x1000,16x0x16,8x10x8,4x10x4", help="PxKxC[xR],..."
  )
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--out", default="bench/results/agent_cost.json")
  args = ap.parse_args()
  rows = []
  for s in args.settings.split(","):
    p, k, c, *r = (int(x) for x in s.split("x"))
    rows.append(time_setting(p, k, c, args.repeats, *r))
    print(json.dumps(rows[-1]), flush=True)
  out = {"benchmark": "agent_cost", "settings": {**vars(args), "cpu": cpu_model(),
         "load_average_at_end": os.getloadavg()}, "jax": jax.__version__, "rows": rows}  # fmt: skip
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
