"""Hooks: what the loop calls at step ends and epoch ends, and the built-in ones.

The loop (``loop.py``) runs the training steps and keeps the books (``RunState``); everything
else it does is a hook, called in order as ``for h in hooks: h.after_steps(run, window)`` after
every window of steps and ``h.end_epoch(run, end)`` after every epoch::

  NonFiniteGuard (guards.py)  stop at a non-finite loss or gradient (nan_policy)
  TensorBoard                 scalars under <workdir>/tb
  ProgressBar                 tqdm, one bar per epoch
  EpochLog                    one line per epoch through ``log``
  ... hooks passed to loop.run(hooks=...) ...
  Checkpointing               epoch ends, every n steps, and on pre-emption (SIGTERM)

A window holds the metrics of the ``k`` consecutive steps that just ran, each leaf stacked over
the steps (``k = 1`` by default; ``--steps_per_window`` hands over a compiled window of ``k``).
A hook may raise to stop the run (the guards do): nothing of that window has been saved yet.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from arsp_jax.errors import Preempted
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import phases, records
from arsp_jax.train.run_state import RunState


@dataclasses.dataclass(frozen=True)
class Window:
  """The ``k`` consecutive steps of one epoch that have just run; ``run.step`` is the last."""

  k: int
  metrics: dict  # per-step metrics on the devices, every leaf stacked over the k steps
  host: dict | None  # the same on the host if a step of the window is a log point (else None)
  log_steps: tuple[int, ...]  # indices (0..k-1) of the log points: loss/accuracy reported
  rounds: tuple[tuple[int, dict], ...]  # (index, record) of the pruning rounds in the window
  global_step: int  # steps over all phases after the window's last step
  at_epoch_end: bool

  def at(self, j: int) -> dict:
    """The host metrics of step ``j`` of the window (a log point)."""
    return jax.tree.map(lambda v: v[j], self.host)

  def global_step_at(self, j: int) -> int:
    return self.global_step - (self.k - 1 - j)


@dataclasses.dataclass(frozen=True)
class EpochEnd:
  """An epoch that has just ended (``run.epoch`` already counts it)."""

  record: dict  # its entry in history["epochs"]
  skipped: int  # non-finite steps skipped (nan_policy=skip)
  dense_test_accuracy: float | None  # set at the end of the dense phase


class Hook:
  """Base class: every method does nothing. ``begin_epoch`` runs before an epoch's first step
  (``run.step`` > 0 when it resumes mid-epoch); ``close`` once when training stops."""

  def begin_epoch(self, run: RunState) -> None:
    pass

  def after_steps(self, run: RunState, window: Window) -> None:
    pass

  def end_epoch(self, run: RunState, end: EpochEnd) -> None:
    pass

  def close(self) -> None:
    pass


class TensorBoard(Hook):
  """Loss, accuracy and learning rate at log points, round records, epoch validation."""

  def __init__(self, run: RunState, workdir: str):
    # purge_step: TensorBoard drops what a killed run logged after the checkpoint resumed from.
    purge = run.global_step + 1 if run.resumed else None
    self.writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge)

  def after_steps(self, run: RunState, window: Window) -> None:
    pipe, phase = run.pipe, run.phase
    spe = pipe.steps_per_epoch
    lr = phases.phase_schedule(pipe.cfg, phase, spe)
    for j in window.log_steps:
      m, gs = window.at(j), window.global_step_at(j)
      phase_step = run.epoch * spe + run.step - (window.k - 1 - j)
      self.writer.add_scalar(f"{phase}/loss", float(m["loss"]), gs)
      self.writer.add_scalar(f"{phase}/accuracy", float(m["accuracy"]), gs)
      self.writer.add_scalar(f"{phase}/learning_rate", float(lr(phase_step - 1)), gs)
    for j, rec in window.rounds:
      for tag, value in records.round_scalars(rec, pipe.info.paths):
        self.writer.add_scalar(tag, value, window.global_step_at(j))

  def end_epoch(self, run: RunState, end: EpochEnd) -> None:
    rec, gs = end.record, run.global_step
    self.writer.add_scalar(f"{rec['phase']}/val_accuracy", rec["val_accuracy"], gs)
    self.writer.add_scalar("sparsity", rec["sparsity"], gs)
    if "skipped_steps" in rec:
      self.writer.add_scalar(f"{rec['phase']}/skipped_steps", end.skipped, gs)
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


class ProgressBar(Hook):
  """A tqdm bar per epoch; the postfix shows the last log point (and the sparsity in ARSP)."""

  def __init__(self, enabled: bool):
    self.enabled, self.bar = enabled, None

  def begin_epoch(self, run: RunState) -> None:
    self.bar = tqdm(
      total=run.pipe.steps_per_epoch,
      initial=run.step,
      desc=f"{run.phase} {run.epoch + 1}/{run.phase_epochs}",
      disable=not self.enabled,
      leave=False,
      dynamic_ncols=True,
      mininterval=1.0,
    )

  def after_steps(self, run: RunState, window: Window) -> None:
    if window.log_steps:
      m = window.at(window.log_steps[-1])
      post = {"loss": f"{float(m['loss']):.3f}", "acc": f"{float(m['accuracy']):.3f}"}
      rounds = run.history["rounds"]
      if rounds and run.phase == "arsp":
        post["sparsity"] = f"{1 - rounds[-1]['density_after']:.3f}"
        post["proxy_reward"] = f"{rounds[-1]['proxy_reward']:.3f}"
      self.bar.set_postfix(post, refresh=False)
    self.bar.update(window.k)

  def end_epoch(self, run: RunState, end: EpochEnd) -> None:
    self.close()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


class EpochLog(Hook):
  """One line per epoch through ``log`` (and the dense test accuracy when the dense phase ends)."""

  def __init__(self, log: Callable[[str], None]):
    self.log = log

  def end_epoch(self, run: RunState, end: EpochEnd) -> None:
    rec, skipped = end.record, end.skipped
    self.log(
      f"[{rec['phase']} {rec['epoch']}/{run.phase_epochs}] loss {rec['train_loss']:.4f} "
      f"train acc {100 * rec['train_accuracy']:.2f}% val acc {100 * rec['val_accuracy']:.2f}% "
      f"sparsity {rec['sparsity']:.4f} ({rec['seconds']:.1f} s)"
      + (f", {skipped} non-finite step(s) skipped" if skipped else "")
    )
    if end.dense_test_accuracy is not None:
      self.log(f"Dense test accuracy: {100 * end.dense_test_accuracy:.2f}%")


class Checkpointing(Hook):
  """Saves a checkpoint at every epoch end, every ``every_steps`` steps (0: never mid-epoch)
  and, when ``preemption.requested(...)`` (SIGTERM), after the current step, then raises
  :class:`Preempted`. ``before_save(run)`` runs before a mid-epoch save (the non-finite guard:
  a state after a non-finite step is never saved)."""

  def __init__(
    self,
    ck: ckpt_lib.Checkpointer,
    every_steps: int,
    preemption: Any,
    before_save: Callable[[RunState], None] = lambda run: None,
  ):
    self.ck, self.every, self.preemption = ck, every_steps, preemption
    self.before_save = before_save

  def save(self, run: RunState) -> int:
    step = run.global_step
    self.ck.save(step, run.train_state, run.checkpoint_meta())
    return step

  def after_steps(self, run: RunState, window: Window) -> None:
    if window.at_epoch_end:  # end_epoch saves it
      return
    stop = self.preemption.requested(sync_point=bool(window.log_steps))
    gs, every = window.global_step, self.every
    due = every and gs // every > (gs - window.k) // every  # a multiple of every in the window
    if not (stop or due):
      return
    self.before_save(run)
    saved = self.save(run)
    if stop:
      raise Preempted(
        f"pre-empted (SIGTERM): saved checkpoint {saved} at {run.phase} epoch {run.epoch + 1} "
        f"step {run.step}/{run.pipe.steps_per_epoch} in {self.ck.directory}. Rerun the same "
        f"command to resume from it."
      )

  def end_epoch(self, run: RunState, end: EpochEnd) -> None:
    saved = self.save(run)
    if self.preemption.requested(sync_point=True):
      raise Preempted(
        f"pre-empted (SIGTERM): saved checkpoint {saved} at the end of {run.phase} epoch "
        f"{run.epoch} in {self.ck.directory}. Rerun the same command to resume from it."
      )


def stack_one(metrics: dict) -> dict:
  """One step's metrics as a window of one step (a leading axis of 1 on every leaf)."""
  return _stack_one(metrics)


@jax.jit
def _stack_one(metrics):
  return jax.tree.map(lambda x: x[None], metrics)


def host_metrics(metrics: dict) -> dict:
  """A window's metrics on the host (one transfer)."""
  return jax.tree.map(np.asarray, jax.device_get(metrics))
