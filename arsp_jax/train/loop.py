"""The training pipeline: dense BNN -> ARSP rounds -> fine-tuning -> evaluation.

``run(config, workdir)`` reads as the sequence it runs::

  check the config and the workdir            (resume.check_workdir_config)
  restore the latest checkpoint or initialise (resume.restore_or_initialise)
  for each phase, for each epoch:
    train steps; after each: bookkeeping, then every hook's after_steps
    end of epoch: validation, history record, then every hook's end_epoch
  results.json                                (records.finish)

Logging, TensorBoard, checkpointing (epoch ends, every n steps, pre-emption) and the
non-finite guard are hooks (``hooks.py``, ``guards.py``); ``run(hooks=...)`` adds more. The
loop's state is explicit (``run_state.RunState``). A checkpoint is saved at the end of every
epoch; rerun with the same workdir, the run resumes from the latest one. TensorBoard scalars go
under ``<workdir>/tb`` and the results to ``<workdir>/results.json`` (written atomically).
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Callable, Sequence

import jax
import ml_collections

from arsp_jax import configs as config_lib
from arsp_jax import fileio
from arsp_jax.errors import Preempted, TrainingError
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import guards, records, resume
from arsp_jax.train import hooks as hooks_lib
from arsp_jax.train import step as step_lib
from arsp_jax.train.pipeline import Pipeline, check_target_reachable
from arsp_jax.train.run_state import EpochStats, RunState
from arsp_jax.train.state import overall_density

__all__ = ["Pipeline", "Preempted", "TrainingError", "run"]


def run(
  cfg: ml_collections.ConfigDict,
  workdir: str,
  *,
  progress: bool = True,
  log: Callable[[str], None] = print,
  hooks: Sequence[hooks_lib.Hook] = (),
  validated: bool = False,
) -> dict:
  """Runs (or resumes) the configured pipeline; returns the results dict.

  Nothing is written to ``workdir`` until the configuration, the data and the checkpoint to
  resume from (if any) have been checked, so a refused run leaves an existing workdir as it was.
  Resuming restores the newest readable checkpoint (``checkpoint.Checkpointer.restore_latest``),
  mid-epoch ones included. SIGTERM (pre-emption) makes the run save a checkpoint after the
  current step and raise :class:`Preempted`. See the README's "Reliability" section.

  ``hooks`` run after the built-in reporting hooks and before checkpointing (``hooks.py``): at
  a step end they see the step's bookkeeping done and nothing of it saved yet.

  ``cfg`` is validated here (``configs.validate``) unless ``validated``: the caller's entry
  point did it (``train.py`` validates once, before anything starts). A workdir holding a
  finished run of the same configuration (``resume.finished_results``) is not written again:
  its results.json is returned as it is.
  """
  if not validated:
    config_lib.validate(cfg)
  wd = os.path.abspath(workdir)
  resume.check_workdir(wd)
  done = resume.finished_results(cfg, wd)
  if done is not None:
    log(f"{wd} holds this run, finished: its results.json (nothing was run or written).")
    return done
  resume.check_workdir_config(cfg, wd)
  pipe = Pipeline(cfg, workdir, progress=progress, log=log)
  warning = check_target_reachable(cfg, pipe.variables["masks"])
  if warning and jax.process_index() == 0:
    print(warning, file=sys.stderr)
  rs = resume.restore_or_initialise(pipe, log)

  # Everything is checked: from here on the workdir is written.
  os.makedirs(wd, exist_ok=True)
  fileio.write_json_atomic(os.path.join(wd, "config.json"), cfg.to_dict())
  ck = ckpt_lib.Checkpointer(
    os.path.join(wd, "checkpoints"), max_to_keep=cfg.keep_checkpoints, cleanup_tmp=True
  )
  preemption = guards.Preemption()
  all_hooks = default_hooks(rs, ck, preemption, log, extra=hooks)
  preemption.install()
  try:
    while rs.phase_idx < len(pipe.phases):
      train_phase(rs, all_hooks)
    for h in all_hooks:
      h.close()
    results = records.finish(
      pipe, rs.train_state, rs.history, rs.dense_test_accuracy, rs.train_seconds
    )
    fileio.write_json_atomic(os.path.join(wd, "results.json"), results)
  finally:
    preemption.restore()
    for h in all_hooks:
      h.close()
    ck.close()
  return results


def default_hooks(
  rs: RunState,
  ck: ckpt_lib.Checkpointer,
  preemption: guards.Preemption,
  log: Callable[[str], None],
  extra: Sequence[hooks_lib.Hook] = (),
) -> list[hooks_lib.Hook]:
  """The built-in hooks in the order they run, with ``extra`` before checkpointing."""
  cfg = rs.pipe.cfg
  guard = guards.NonFiniteGuard(cfg.nan_policy, ck)
  out: list[hooks_lib.Hook] = [guard]
  if jax.process_index() == 0:
    out.append(hooks_lib.TensorBoard(rs, rs.pipe.workdir))
  out += [hooks_lib.ProgressBar(rs.pipe.progress), hooks_lib.EpochLog(log), *extra]
  out.append(
    hooks_lib.Checkpointing(ck, cfg.checkpoint_every_steps, preemption, before_save=guard.check)
  )
  return out


def train_phase(rs: RunState, hooks: Sequence[hooks_lib.Hook]) -> None:
  """The remaining epochs of the current phase, then moves on to the next phase."""
  pipe, phase = rs.pipe, rs.phase
  tx, steps = pipe.steps(phase)
  if rs.train_state is None:
    rs.train_state = pipe.fresh_state(phase)
  elif rs.state_phase != phase and phase != "dense":
    rs.train_state = step_lib.replicate(
      step_lib.start_phase(rs.train_state, phase, tx, pipe.info, pipe.rc), pipe.mesh
    )
  rs.state_phase = phase
  if rs.epoch < rs.phase_epochs:
    windows = pipe.cfg.steps_per_window > 1
    if phase == "arsp":
      aux = pipe.aux_batches()
      spe, every = pipe.steps_per_epoch, pipe.cfg.arsp.prune_every

      def step_fn(s, b):
        # The host knows how many updates the phase has taken: it calls the step with the
        # round when one is due and the one without otherwise (no lax.cond on every step).
        # Windows are cut before every round, so only a window's first step can carry one.
        due = step_lib.round_due(rs.epoch * spe + rs.step, every)
        return steps.arsp(with_round=due, window=windows)(s, b, aux)
    else:
      step_fn = steps.train(window=windows)
    while rs.epoch < rs.phase_epochs:
      train_epoch(rs, step_fn, hooks)
      end_epoch(rs, hooks)
  rs.phase_idx += 1
  rs.epoch = 0


def train_epoch(rs: RunState, step_fn, hooks: Sequence[hooks_lib.Hook]) -> None:
  """The remaining steps of the current epoch, each followed by every hook's ``after_steps``."""
  pipe, cfg = rs.pipe, rs.pipe.cfg
  rs.stats = EpochStats.resume(rs.partial)
  rs.partial = None
  for h in hooks:
    h.begin_epoch(rs)
  batches = pipe.dataset.train_batches(
    rs.global_epoch, cfg.batch_size, cfg.seed, start_step=rs.step
  )
  # The next batch (window) goes to the devices while this one runs; a stop (SIGTERM,
  # non-finite loss) or a checkpoint records rs.step, the batches consumed, so a prefetched
  # batch is never lost.
  if cfg.steps_per_window > 1:
    lengths = step_lib.window_lengths(
      rs.step + 1, pipe.steps_per_epoch, cfg.steps_per_window, lambda s: _cut_after(rs, s)
    )
    items = step_lib.device_batches(
      step_lib.stack_windows(batches, lengths), pipe.mesh, place=step_lib.shard_window
    )
  else:
    lengths, items = itertools.repeat(1), step_lib.device_batches(batches, pipe.mesh)
  try:
    for k, b in zip(lengths, items):
      rs.train_state, m = step_fn(rs.train_state, b)
      rs.step += k
      window = record_steps(rs, m if cfg.steps_per_window > 1 else hooks_lib.stack_one(m), k=k)
      for h in hooks:
        h.after_steps(rs, window)
  finally:
    batches.close()  # stops grain's workers now, also when a hook stops the run


def _cut_after(rs: RunState, s: int) -> bool:
  """Whether a window must end after step ``s`` of the current epoch (1-based): before a
  pruning round (a round starts its window) and at every ``checkpoint_every_steps`` multiple
  (the checkpoint is then taken at that exact step, as without windows)."""
  pipe, cfg = rs.pipe, rs.pipe.cfg
  spe, every = pipe.steps_per_epoch, cfg.checkpoint_every_steps
  if every and (rs.global_epoch * spe + s) % every == 0:
    return True
  return rs.phase == "arsp" and step_lib.round_due(rs.epoch * spe + s, cfg.arsp.prune_every)


def record_steps(rs: RunState, metrics: dict, k: int) -> hooks_lib.Window:
  """The bookkeeping of the ``k`` steps that just ran (``metrics`` stacked over them): counts
  non-finite steps; at log points (every ``log_every`` steps, the epoch's last step and every
  step that carried a pruning round) fetches the metrics, adds them to the epoch's sums and
  records the rounds."""
  pipe, cfg = rs.pipe, rs.pipe.cfg
  spe, first = pipe.steps_per_epoch, rs.step - k + 1
  phase_steps = [rs.epoch * spe + s for s in range(first, rs.step + 1)]
  rs.stats.track_nonfinite(metrics["finite"], phase_steps)
  # A round runs at the start of a step whose input has taken a multiple of prune_every updates.
  is_round = [
    rs.phase == "arsp" and step_lib.round_due(p - 1, cfg.arsp.prune_every) for p in phase_steps
  ]
  log_steps = tuple(
    j
    for j, s in enumerate(range(first, rs.step + 1))
    if is_round[j] or s % cfg.log_every == 0 or s == spe
  )
  host = hooks_lib.host_metrics(metrics) if log_steps else None
  rounds = []
  for j in log_steps:
    m = jax.tree.map(lambda v, j=j: v[j], host)
    if bool(m["finite"]):
      rs.stats.add(float(m["loss"]), float(m["accuracy"]))
    if is_round[j]:
      rec = records.round_record(m, len(rs.history["rounds"]) + 1, phase_steps[j])
      rs.history["rounds"].append(rec)
      rounds.append((j, rec))
  return hooks_lib.Window(
    k=k,
    metrics=metrics,
    host=host,
    log_steps=log_steps,
    rounds=tuple(rounds),
    global_step=rs.global_step,
    at_epoch_end=rs.step == spe,
  )


def end_epoch(rs: RunState, hooks: Sequence[hooks_lib.Hook]) -> None:
  """Validation and the epoch's history record; then every hook's ``end_epoch``."""
  pipe, stats = rs.pipe, rs.stats
  seconds = stats.seconds()
  rs.train_seconds += seconds
  skipped = stats.nonfinite_count()
  val = pipe.evaluate(rs.train_state, "val")
  density = float(jax.device_get(overall_density(rs.train_state.masks, pipe.info)))
  rec = {
    "phase": rs.phase,
    "epoch": rs.epoch + 1,
    "train_loss": stats.loss / max(stats.n, 1),
    "train_accuracy": stats.accuracy / max(stats.n, 1),
    "val_accuracy": val["accuracy"],
    "sparsity": 1.0 - density,
    "seconds": seconds,
  }
  if pipe.cfg.nan_policy == "skip":
    rec["skipped_steps"] = skipped
  rs.history["epochs"].append(rec)
  dense_acc = None
  if rs.phase == "dense" and rs.epoch + 1 == rs.phase_epochs:
    dense_acc = rs.dense_test_accuracy = pipe.evaluate(rs.train_state, "test")["accuracy"]
  rs.epoch, rs.step, rs.stats = rs.epoch + 1, 0, None
  end = hooks_lib.EpochEnd(record=rec, skipped=skipped, dense_test_accuracy=dense_acc)
  for h in hooks:
    h.end_epoch(rs, end)
