"""Guards: stop a run cleanly at a non-finite step, save and stop it on pre-emption (SIGTERM).

``NonFiniteGuard`` is a hook (``hooks.py``) that applies ``nan_policy`` to the non-finite steps
the loop counts; ``Preemption`` turns SIGTERM into a flag that the ``Checkpointing`` hook checks
after every window of steps (it saves a checkpoint, then raises ``Preempted``).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from arsp_jax.errors import TrainingError
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train.hooks import EpochEnd, Hook, Window
from arsp_jax.train.run_state import RunState


class NonFiniteGuard(Hook):
  """``nan_policy=stop``: a non-finite loss or gradient ends the run with a TrainingError naming
  the step and the last good checkpoint (checked at log points and before mid-epoch saves).
  ``skip`` (the compiled step leaves the state as it was): only an epoch whose every step was
  skipped ends the run."""

  def __init__(self, policy: str, ck: ckpt_lib.Checkpointer):
    self.skip, self.ck = policy == "skip", ck

  def after_steps(self, run: RunState, window: Window) -> None:
    if window.log_steps:
      self.check(run)

  def check(self, run: RunState) -> None:
    """nan_policy=stop: TrainingError if a step of the running epoch was non-finite."""
    if self.skip:
      return
    first = run.stats.first_nonfinite_step()
    if first < 0:
      return
    spe, last = run.pipe.steps_per_epoch, self.ck.latest_step()
    raise TrainingError(
      f"Non-finite loss or gradient at {run.phase} step {first} (epoch {(first - 1) // spe + 1}, "
      f"step {(first - 1) % spe + 1} of {spe}). Nothing was saved from this step on; the last "
      f"good checkpoint is "
      + (
        f"#{last} in {self.ck.directory}, which a rerun resumes from"
        if last is not None
        else "none (the run starts over when rerun)"
      )
      + ". Lower the learning rate or check the input data, then rerun; or pass "
      "--nan_policy=skip to skip such steps."
    )

  def end_epoch(self, run: RunState, end: EpochEnd) -> None:
    if self.skip and end.skipped >= run.pipe.steps_per_epoch:
      raise TrainingError(
        f"Every step of {end.record['phase']} epoch {end.record['epoch']} had a non-finite loss "
        f"or gradient and was skipped (nan_policy=skip); the weights are those of the last good "
        f"step. Lower the learning rate or check the input data, then rerun."
      )


class Preemption:
  """SIGTERM -> a flag the training loop checks after every step (main thread only)."""

  def __init__(self):
    self.flag = False
    self._old = None

  def _handler(self, signum, frame):
    self.flag = True

  def install(self) -> None:
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)

  def restore(self) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None

  def requested(self, sync_point: bool) -> bool:
    if jax.process_count() == 1:
      return self.flag
    if not sync_point:  # processes agree at deterministic points only
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.flag))))
