"""Training-step throughput: dense BNN step vs ARSP step (statistics + rounds + agent).

The ARSP step is timed over whole pruning intervals, so the cost of the pruning round
(batchnorm re-estimation, reward evaluation, PPO update, reservoir masks) is averaged over
the `prune_every` steps it covers, exactly as in training.  Both steps are timed in the same
process, one pruning interval at a time, interleaved (the order rotating from one interval to the
next), and the overhead is the median of the per-interval ratios (with a bootstrap 95% CI).

  python bench/train_step.py                       # Fashion-MNIST MLP, batch 256, 1 device
  python bench/train_step.py --devices=8 --intervals=1 --repeats=1   # 8 fake CPU devices:
      # completes (correctness, not speed): bench/results/train_step_mlp_magnitude_8dev.json
  python bench/train_step.py --model=cnn_small --batch_size=128
  python bench/train_step.py --population=1 --out=bench/results/train_step_mlp_p1.json

Times, interleaved in one process: the dense step; the pruning phase with the round decided on
the device (a ``lax.cond`` in every step, the old form) and chosen by the host (the loop's: the
step with the round when one is due, the one without otherwise); and the breakdown: the cond
step between rounds and the plain step against the dense step (the cost every step carries),
and the round step against the plain one (the round itself).

``--devices=8`` on the 2-core machine: without help it aborts on XLA:CPU's 40 s collective
rendezvous timeout, and raising the timeout alone only turns the abort into a hang. A gdb
backtrace of a hung run (jax 0.10.2): 4 of the 8 device programs wait inside the all-reduce
rendezvous, while the launches for the other 4 devices are blocked on a semaphore in
``CpuPjRtRawLoadedExecutable::Execute`` on the PjRt client's 8 threads; the script had dispatched
steps without waiting for them (a multi-device program is always dispatched asynchronously:
``jax_cpu_enable_async_dispatch`` only applies to single-device computations). So with
``--devices>1`` this script (1) waits for every step's result before calling the next
(``--sync``, default 1 there; the timings then include that wait) and (2) raises XLA:CPU's
collective timeouts, ``--xla_cpu_collective_timeout_seconds`` and
``--xla_cpu_collective_call_terminate_timeout_seconds`` (both in the pinned jaxlib), to
``--collective_timeout_s`` (600 s), set in XLA_FLAGS before jax is imported, and (3) defaults to
P = 4 and a round every 10 steps (with P = 16 and 50 steps, the compiles and rounds of
``--intervals=1 --repeats=1`` had not finished after 25 min at a load average of 12; that run,
waiting for every step, never reported a stuck rendezvous). One run without the wait hung, two
with it did not: a small sample, not a proof. 8 fake devices share the cores: such a run checks
that the step completes, not speed (use ``--devices=1`` for timings).

Writes bench/results/train_step_<model>_<score>_<n>dev.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, NamedTuple


class RoundCarry(NamedTuple):
  """What a pruning round changes in the state: the operands of the cond step's branches."""

  masks: Any
  keep_ratios: Any
  batch_stats: Any
  agent: Any
  prune: Any
  rng: Any

  @classmethod
  def of(cls, state) -> RoundCarry:
    return cls(**{f: getattr(state, f) for f in cls._fields})


def cond_arsp_step(model, tx, info, rc):
  """The pruning-phase step that decides on the device whether a round is due (a ``lax.cond``
  on the step counter), the form the training loop replaced with the host-chosen pair
  (``step.Steps.arsp(with_round=...)``): kept here, for this comparison only.

  Only what a round changes goes through the cond (:class:`RoundCarry`); parameters and
  gradient statistics are read-only operands and the optimizer state stays outside, so steps
  without a round do not copy the large buffers (measured: passing the whole state cost ~40% per
  step on a CPU)."""
  import jax

  from arsp_jax.train import round as round_lib
  from arsp_jax.train import step as step_lib
  from arsp_jax.train.state import TrainState

  def with_round(read_only, carry: RoundCarry, aux):
    view = TrainState(
      step=None, opt_state=None, params=read_only[0], grad_ema=read_only[1], **carry._asdict()
    )
    s, m = round_lib.pruning_round(model, info, rc, view, aux)
    return RoundCarry.of(s), m

  def without_round(read_only, carry: RoundCarry, aux):
    shapes = jax.eval_shape(with_round, read_only, carry, aux)[1]
    return carry, jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)

  def arsp_step(state, batch, aux):
    do_round = (state.step > 0) & ((state.step % rc.prune_every) == 0)
    read_only = (state.params, state.grad_ema)
    carry, rm = jax.lax.cond(
      do_round, with_round, without_round, read_only, RoundCarry.of(state), aux
    )
    state, metrics = step_lib.update(
      model,
      tx,
      info,
      state.replace(**carry._asdict()),
      batch,
      track_grads=True,
      decay=rc.grad_ema_decay,
      per_weight=rc.per_weight_grads,
    )
    return state, {**metrics, **rm}

  return arsp_step


def jit_cond_step(pipe, tx):
  """:func:`cond_arsp_step` compiled as the pipeline compiles its steps."""
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  repl, data = NamedSharding(pipe.mesh, P()), NamedSharding(pipe.mesh, P("data"))
  return jax.jit(
    cond_arsp_step(pipe.model, tx, pipe.info, pipe.rc),
    in_shardings=(repl, data, data),
    out_shardings=(repl, repl),
    donate_argnums=0,
  )


def main():
  wall_start = time.perf_counter()
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--model", default="mlp")
  ap.add_argument(
    "--dataset", default="fashion_mnist", help="fashion_mnist (if installed) or synthetic"
  )
  ap.add_argument("--batch_size", type=int, default=256)
  ap.add_argument("--prune_every", type=int, default=None, help="default 50 (10 with --devices>1)")
  ap.add_argument(
    "--score",
    default="magnitude",
    help="magnitude keeps per-layer gradient statistics; taylor/seed keep them per weight",
  )
  ap.add_argument(
    "--population",
    type=int,
    default=None,
    help="candidates the agent scores per round: default 16 (4 with --devices>1)",
  )
  ap.add_argument("--intervals", type=int, default=8, help="pruning intervals timed per repeat")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--devices", type=int, default=1, help="fake CPU devices (set before JAX starts)")
  ap.add_argument(
    "--sync",
    type=int,
    default=None,
    help="1: wait for every step's result before calling the next (default: 1 with --devices>1)",
  )
  ap.add_argument(
    "--collective_timeout_s",
    type=int,
    default=600,
    help="XLA:CPU collective timeouts with --devices>1 (XLA's default aborts after 40 s)",
  )
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  multi = args.devices > 1
  if args.prune_every is None:
    args.prune_every = 10 if multi else 50
  if args.population is None:
    args.population = 4 if multi else 16
  if args.sync is None:
    args.sync = int(args.devices > 1)
  if args.devices > 1:
    t = args.collective_timeout_s
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={args.devices}"
      + f" --xla_cpu_collective_timeout_seconds={t}"
      + f" --xla_cpu_collective_call_terminate_timeout_seconds={t}"
    )
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np

  from arsp_jax import configs as config_lib
  from arsp_jax.train import loop
  from arsp_jax.train import step as step_lib

  cfg = config_lib.get_config(args.dataset)
  cfg = config_lib.apply_overrides(
    cfg,
    {
      "model": args.model,
      "batch_size": args.batch_size,
      "arsp.prune_every": args.prune_every,
      "arsp.population": args.population,
      "num_devices": args.devices,
      "arsp.score": args.score,
    },
  )
  if args.dataset == "synthetic":
    cfg = config_lib.apply_overrides(cfg, {"dataset_kwargs.num_train": 20000})
  pipe = loop.Pipeline(cfg, "/tmp/arsp_bench", progress=False)
  batches = []
  for b in pipe.dataset.train_batches(0, cfg.batch_size, 0):
    batches.append(step_lib.shard_batch(b, pipe.mesh))
    if len(batches) == args.prune_every:
      break
  _, dsteps = pipe.steps("dense")
  tx, asteps = pipe.steps("arsp")
  dense_state = pipe.fresh_state("dense")
  arsp_state = step_lib.replicate(
    step_lib.start_phase(pipe.fresh_state("dense"), "arsp", tx, pipe.info, pipe.rc), pipe.mesh
  )
  aux = pipe.aux_batches()
  cond_step = jit_cond_step(pipe, tx)
  fixed = {
    "arsp": cond_step,
    "arsp_plain": asteps.arsp(with_round=False),
    "arsp_round": asteps.arsp(with_round=True),
  }

  def run_dense(state, n):
    for i in range(n):
      state, m = dsteps.train()(state, batches[i % len(batches)])
      if args.sync:
        jax.block_until_ready(m["loss"])
    jax.block_until_ready(m["loss"])
    return state

  every = args.prune_every

  def run_arsp(state, n, host_chosen):
    """``n`` pruning-phase steps (rounds every ``prune_every`` updates included): the step that
    decides on the device (``lax.cond``, the old form) or the host-chosen pair (the loop's)."""
    for i in range(n):
      done = int(state_steps[0])
      due = step_lib.round_due(done, every)
      fn = asteps.arsp(with_round=due) if host_chosen else cond_step
      state, m = fn(state, batches[i % len(batches)], aux)
      if args.sync:
        jax.block_until_ready(m["loss"])
      state_steps[0] = done + 1
    jax.block_until_ready(m["loss"])
    return state

  def run_fixed(state, n, name):
    """``n`` calls of one compiled step (``arsp_plain``: no round; ``arsp_round``: always one;
    ``arsp``: the cond step between two rounds, never taking the round branch)."""
    for i in range(n):
      state, m = fixed[name](state, batches[i % len(batches)], aux)
      if args.sync:
        jax.block_until_ready(m["loss"])
    jax.block_until_ready(m["loss"])
    return state

  def at_step(state, k):
    return state.replace(step=jax.device_put(np.int32(k), state.step.sharding))

  # Warm-up: compile every step (and both branches of the cond).
  state_steps = [0]
  t = time.perf_counter()
  dense_state = run_dense(dense_state, 2)
  dense_compile = time.perf_counter() - t
  t = time.perf_counter()
  arsp_state = run_arsp(arsp_state, every + 1, host_chosen=False)
  arsp_compile = time.perf_counter() - t
  state_steps[0] = 0
  arsp_state = at_step(arsp_state, 0)
  arsp_state = run_arsp(arsp_state, every + 1, host_chosen=True)
  n = every * args.intervals
  k = max(1, min(every - 1, 20))  # steps between two rounds timed for the cond step
  times = {
    name: []
    for name in (
      "dense",
      "dense_repeat",
      "arsp_cond",
      "arsp_host",
      "cond_no_round",
      "plain",
      "round",
    )
  }

  def time_dense(steps):
    nonlocal dense_state
    t = time.perf_counter()
    dense_state = run_dense(dense_state, steps)
    times["dense"].append((time.perf_counter() - t) / steps)

  def time_arsp(host_chosen, name):
    """One pruning interval: the calls after 1 .. `every` updates, the last with its round."""
    nonlocal arsp_state
    state_steps[0] = 1
    arsp_state = at_step(arsp_state, 1)
    t = time.perf_counter()
    arsp_state = run_arsp(arsp_state, every, host_chosen)
    times[name].append((time.perf_counter() - t) / every)

  # The three are timed one pruning interval at a time, interleaved (dense, cond, host-chosen,
  # the order rotating from one interval to the next), and each overhead is the median of the
  # per-interval ratios: neighbours in time share the shared machine's speed of the moment,
  # which drifts by several percent over the seconds a block of intervals takes.
  kinds = [
    lambda: time_dense(every),
    lambda: time_arsp(False, "arsp_cond"),
    lambda: time_arsp(True, "arsp_host"),
  ]
  for r in range(args.repeats):
    for i in range(args.intervals):
      j = r * args.intervals + i
      for timed in kinds[j % 3 :] + kinds[: j % 3]:
        timed()
    times["dense_repeat"].append(float(np.mean(times["dense"][-args.intervals :])))
    arsp_state = at_step(arsp_state, 1)  # 1..k: no round due
    t = time.perf_counter()
    arsp_state = run_fixed(arsp_state, k, "arsp")
    times["cond_no_round"].append((time.perf_counter() - t) / k)
    t = time.perf_counter()
    arsp_state = run_fixed(arsp_state, k, "arsp_plain")
    times["plain"].append((time.perf_counter() - t) / k)
    arsp_state = at_step(arsp_state, every)
    t = time.perf_counter()
    arsp_state = run_fixed(arsp_state, 2, "arsp_round")
    times["round"].append((time.perf_counter() - t) / 2)
  med = {name: float(np.median(v)) for name, v in times.items()}
  d, a, h = med["dense"], med["arsp_cond"], med["arsp_host"]
  # The overheads are medians of the per-interval (or, for the breakdown, per-repeat) ratios of
  # steps timed back to back, which a drift of the machine's speed does not bias.
  ratio = lambda x, y: float(np.median(np.asarray(times[x]) / np.asarray(times[y])))
  per_interval = np.asarray(times["arsp_host"]) / np.asarray(times["dense"]) - 1.0
  boot = np.random.default_rng(0).choice(per_interval, (2000, per_interval.size))
  ci = np.percentile(np.median(boot, axis=1), [2.5, 97.5])
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  out = {
    "benchmark": "train_step",
    "settings": vars(args),
    "model": args.model,
    "dataset": pipe.dataset.name,
    "layers": list(pipe.info.paths),
    "prunable_connections": pipe.info.total,
    "score": args.score,
    "per_weight_grad_stats": pipe.rc.per_weight_grads,
    "calib_size": cfg.arsp.calib_size,
    "reward_size": cfg.arsp.reward_size,
    "steps_timed_per_repeat": n,
    "timing_unit": "interval",  # *_all_repeats: one entry per timed pruning interval
    "arsp_overhead_ci95": [float(ci[0]), float(ci[1])],
    "dense_ms_per_step": 1e3 * d,
    "arsp_ms_per_step": 1e3 * h,
    "dense_images_per_s": args.batch_size / d,
    "arsp_images_per_s": args.batch_size / h,
    "arsp_overhead": ratio("arsp_host", "dense") - 1.0,
    "arsp_overhead_ratio_of_medians": h / d - 1.0,
    "arsp_cond_ms_per_step": 1e3 * a,
    "arsp_cond_overhead": ratio("arsp_cond", "dense") - 1.0,
    "breakdown_ms": {
      "dense_step": 1e3 * d,
      "cond_step_without_round": 1e3 * med["cond_no_round"],
      "plain_step": 1e3 * med["plain"],
      "round_step": 1e3 * med["round"],
    },
    "carried_per_step_cond": ratio("cond_no_round", "dense_repeat") - 1.0,
    "carried_per_step_host": ratio("plain", "dense_repeat") - 1.0,
    "round_cost_ms": 1e3 * (med["round"] - med["plain"]),
    "dense_ms_all_repeats": [1e3 * x for x in times["dense"]],
    "arsp_ms_all_repeats": [1e3 * x for x in times["arsp_host"]],
    "arsp_cond_ms_all_repeats": [1e3 * x for x in times["arsp_cond"]],
    "load_average_at_end": list(os.getloadavg()),
    "wall_s": time.perf_counter() - wall_start,
    "first_calls_seconds": {"dense": dense_compile, "arsp": arsp_compile},
    "devices": pipe.num_devices,
    "device_kind": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
    "cpu": cpu,
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "note": (
      "8 fake CPU devices share the same cores: figures check correctness, not speed"
      if args.devices > 1 and jax.default_backend() == "cpu"
      else ""
    ),
  }
  path = args.out or os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "results",
    f"train_step_{args.model}_{args.score}_{args.devices}dev.json",
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(
    f"{args.model} batch {args.batch_size} on {pipe.num_devices} {out['device_kind']} device(s):"
  )
  print(f"  dense step {1e3 * d:7.2f} ms ({args.batch_size / d:8.0f} img/s)")
  print(
    f"  ARSP  step {1e3 * h:7.2f} ms ({args.batch_size / h:8.0f} img/s), averaged over "
    f"pruning intervals of {args.prune_every} steps, round chosen by the host: "
    f"{100 * out['arsp_overhead']:+.1f}% (median of {per_interval.size} per-interval ratios, "
    f"bootstrap 95% CI {100 * ci[0]:+.1f}% to {100 * ci[1]:+.1f}%)"
  )
  print(f"  (the old cond step: {1e3 * a:7.2f} ms, {100 * out['arsp_cond_overhead']:+.1f}%)")
  print(
    f"  carried by every step: cond {100 * out['carried_per_step_cond']:+.1f}%, host-chosen "
    f"{100 * out['carried_per_step_host']:+.1f}%; the round itself {out['round_cost_ms']:.1f} ms"
  )
  print(f"  -> {path}")


if __name__ == "__main__":
  main()
