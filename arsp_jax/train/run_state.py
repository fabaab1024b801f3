"""What a run carries from step to step: the train state, where the run is, what it recorded.

``RunState`` is the loop's explicit state (no closures over rebound names): the ``TrainState``
on the devices, the position (phase, epochs of that phase done, steps of the running epoch
done), the history that goes into ``results.json`` and the running epoch's bookkeeping
(``EpochStats``). The loop and its hooks (``hooks.py``, ``guards.py``) read and update it; a
checkpoint saves it (``checkpoint_meta``) and ``resume.py`` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arsp_jax.train.pipeline import Pipeline


@jax.jit
def _track_nonfinite(count, first, finite, steps):
  """``finite``/``steps``: per step of a window, stacked. Adds the window's non-finite steps to
  ``count``; ``first`` becomes the first of them unless it is set already."""
  bad = jnp.logical_not(finite)
  first_bad = jnp.where(jnp.any(bad), steps[jnp.argmax(bad.astype(jnp.int32))], -1)
  return count + jnp.sum(bad, dtype=jnp.int32), jnp.where(first < 0, first_bad, first)


@dataclasses.dataclass
class EpochStats:
  """The running epoch's bookkeeping; saved in a mid-epoch checkpoint as ``partial``.

  ``loss``/``accuracy``/``n``: sums over the steps at log points whose loss is finite (the
  epoch record reports their means). Non-finite steps are counted on the devices (no host sync
  per step); ``first_nonfinite`` is the first one's step in the phase since the run (re)started.
  """

  loss: float = 0.0
  accuracy: float = 0.0
  n: int = 0
  t0: float = dataclasses.field(default_factory=time.time)
  nonfinite: Any = dataclasses.field(default_factory=lambda: jnp.asarray(0, jnp.int32))
  first_nonfinite: Any = dataclasses.field(default_factory=lambda: jnp.asarray(-1, jnp.int32))

  @classmethod
  def resume(cls, partial: dict | None) -> EpochStats:
    """The stats of an epoch resumed from a mid-epoch checkpoint's ``partial`` (None: fresh)."""
    part = partial or {}
    sums = dict(part.get("sums") or {"loss": 0.0, "accuracy": 0.0, "n": 0})
    return cls(
      loss=sums["loss"],
      accuracy=sums["accuracy"],
      n=sums["n"],
      t0=time.time() - float(part.get("seconds", 0.0)),
      nonfinite=jnp.asarray(int(part.get("skipped", 0)), jnp.int32),
    )

  def add(self, loss: float, accuracy: float) -> None:
    self.loss += loss
    self.accuracy += accuracy
    self.n += 1

  def track_nonfinite(self, finite, phase_steps) -> None:
    """``finite``: the window's per-step flags (stacked); ``phase_steps``: their steps."""
    self.nonfinite, self.first_nonfinite = _track_nonfinite(
      self.nonfinite, self.first_nonfinite, finite, np.asarray(phase_steps, np.int32)
    )

  def nonfinite_count(self) -> int:
    return int(jax.device_get(self.nonfinite))

  def first_nonfinite_step(self) -> int:
    """The phase step of the first non-finite step, -1 if none (a host sync)."""
    return int(jax.device_get(self.first_nonfinite))

  def seconds(self) -> float:
    return time.time() - self.t0

  def partial(self) -> dict:
    sums = {"loss": self.loss, "accuracy": self.accuracy, "n": self.n}
    return {"sums": sums, "seconds": self.seconds(), "skipped": self.nonfinite_count()}


@dataclasses.dataclass
class RunState:
  """Everything the loop carries between steps (see the module docstring)."""

  pipe: Pipeline
  config_json: dict  # the configuration as config.json and every checkpoint store it
  train_state: Any = None  # the TrainState on the devices; None until the first phase starts
  state_phase: str | None = None  # the phase ``train_state`` is set up for
  phase_idx: int = 0  # the position: index into ``pipe.phases`` ...
  epoch: int = 0  # ... epochs of that phase completed ...
  step: int = 0  # ... and steps of the running epoch completed
  history: dict = dataclasses.field(default_factory=lambda: {"epochs": [], "rounds": []})
  dense_test_accuracy: float | None = None
  train_seconds: float = 0.0
  stats: EpochStats | None = None  # the running epoch's bookkeeping
  partial: dict | None = None  # a mid-epoch checkpoint's stats, for the epoch it resumes
  resumed: bool = False  # restored from a checkpoint of this workdir

  @property
  def phase(self) -> str:
    return self.pipe.phases[self.phase_idx][0]

  @property
  def phase_epochs(self) -> int:
    return self.pipe.phases[self.phase_idx][1]

  @property
  def global_epoch(self) -> int:
    """Epochs completed over all phases (the data order depends on it)."""
    return sum(e for _, e in self.pipe.phases[: self.phase_idx]) + self.epoch

  @property
  def global_step(self) -> int:
    """Steps completed over all phases: the TensorBoard step and the checkpoint number."""
    return self.global_epoch * self.pipe.steps_per_epoch + self.step

  def checkpoint_meta(self) -> dict:
    """The JSON a checkpoint stores next to the state (mid-epoch: with the epoch's stats)."""
    meta = {
      "phase": self.phase,
      "phase_epoch": self.epoch,
      "step_in_epoch": self.step,
      "history": self.history,
      "dense_test_accuracy": self.dense_test_accuracy,
      "train_seconds": self.train_seconds,
      "config": self.config_json,
    }
    if self.step > 0:
      meta["partial"] = self.stats.partial()
    return meta
