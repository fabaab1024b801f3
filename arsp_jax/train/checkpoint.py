"""Orbax checkpoints of the train state plus a JSON record of where the run is.

A checkpoint is numbered by the count of training steps completed over all
phases (so a checkpoint written at a pre-emption, mid-epoch, sorts between the
epoch-end ones; older workdirs numbered by completed epochs still resume, since
where a run is comes from ``meta``, not from the number). It holds two items:
``state`` (the ``TrainState`` pytree) and ``meta`` (JSON: phase, epochs
completed in that phase, steps done in the current epoch, history for the
report, the configuration).

Crash safety. Orbax writes each checkpoint to a temporary directory and renames
it when complete, so a run killed while saving leaves the previous checkpoint
intact; leftover temporary directories are removed when a writing
``Checkpointer`` is opened. :meth:`Checkpointer.restore_latest` restores the
newest *usable* checkpoint: one that cannot be read (truncated or garbled files)
is reported, renamed to ``<step>.corrupt`` and the one before it is used. A
checkpoint that reads fine but was written by a different model or input shape
is not corruption: it raises :class:`CheckpointMismatch` and nothing is renamed.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from arsp_jax.errors import CheckpointError, CheckpointMismatch

logger = logging.getLogger(__name__)


def _first_line(e: BaseException, limit: int = 200) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _flat_shapes(tree) -> dict[str, tuple]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[key] = tuple(getattr(leaf, "shape", ()))
  return out


class Checkpointer:
  """Saves and restores ``(state, meta)`` checkpoints in ``directory``.

  ``create=False`` (the default) creates the directory only at the first save, so a run refused
  before it trains leaves no stray directories. ``cleanup_tmp=True`` (writers only) removes
  temporary directories left by a save that was killed.
  """

  def __init__(
    self, directory: str, max_to_keep: int = 2, *, create: bool = False, cleanup_tmp: bool = False
  ):
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=cleanup_tmp and os.path.isdir(self.directory),
      ),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    self.manager.wait_until_finished()

  def _read(self, step: int, fn: Callable[[], Any]) -> Any:
    """``fn()``, with a read failure of checkpoint ``step`` turned into a CheckpointError."""
    try:
      return fn()
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
      raise CheckpointError(
        f"Checkpoint {step} in {self.directory} cannot be read ({_first_line(e)}): its files "
        f"are damaged. Rerun train.py with the run's flags to resume from the previous "
        f"checkpoint (the damaged one is moved aside), or remove it."
      ) from e

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    out = self._read(
      step, lambda: self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    )
    return dict(out["meta"])

  def check_fits(self, template: Any, step: int) -> None:
    """Raises :class:`CheckpointMismatch` if checkpoint ``step`` holds other arrays or shapes
    than ``template`` (another model, model size or input shape)."""
    stored = self._read(step, lambda: self.manager.item_metadata(step)["state"])
    stored = getattr(stored, "tree", stored)
    if stored is None:
      raise CheckpointError(f"Checkpoint {step} in {self.directory} has no readable state.")
    have, want = _flat_shapes(stored), _flat_shapes(template)
    problems = []
    for k in sorted(set(have) | set(want)):
      if k not in have:
        problems.append(f"{k} is missing from the checkpoint")
      elif k not in want:
        problems.append(f"the checkpoint has {k}, which this model does not")
      elif have[k] != want[k]:
        problems.append(f"{k} has shape {have[k]} in the checkpoint but {want[k]} in this model")
    if problems:
      raise CheckpointMismatch(
        f"Checkpoint {step} in {self.directory} was written by a different model or for "
        f"inputs of another shape: "
        + "; ".join(problems[:3])
        + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        + ". Use the dataset, --data_dir and model flags the run was trained with, or start "
        "a new run with a new --workdir."
      )

  def restore_state(self, template: Any, step: int | None = None) -> Any:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    self.check_fits(template, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self._read(
      step,
      lambda: self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      ),
    )
    return out["state"]

  def restore_latest(
    self, template_for: Callable[[dict], Any], log: Callable[[str], None] = print
  ) -> tuple[int, dict, Any] | None:
    """``(step, meta, state)`` of the newest readable checkpoint, or None if there is none.

    ``template_for(meta)`` returns the state template for a checkpoint's meta (it may raise
    :class:`CheckpointMismatch`, which propagates). Checkpoints newer than the one restored that
    cannot be read are reported through ``log``, renamed to ``<step>.corrupt`` and skipped. If
    no checkpoint can be read, :class:`CheckpointError` says so and nothing is renamed.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    failures: list[tuple[int, str]] = []
    for step in steps:
      try:
        meta = self.restore_meta(step)
        if not isinstance(meta, dict) or "phase" not in meta:
          raise CheckpointError("its meta item has no 'phase'")
        template = template_for(meta)
        state = self.restore_state(template, step)
      except CheckpointMismatch:
        raise
      except Exception as e:  # noqa: BLE001 - anything unreadable is treated as corrupt
        failures.append((step, _first_line(e)))
        continue
      for bad, why in failures:
        moved = self._move_aside(bad)
        log(
          f"warning: checkpoint {bad} in {self.directory} is unreadable ({why}); moved it to "
          f"{os.path.basename(moved)} and resumed from checkpoint {step} instead."
        )
      if failures:
        self.manager.reload()
      return step, meta, state
    listing = "; ".join(f"checkpoint {s}: {why}" for s, why in failures[:3])
    raise CheckpointError(
      f"No checkpoint in {self.directory} can be read ({listing}). The files are damaged. "
      f"Remove {self.directory} to start the run over, or pass a new --workdir."
    )

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst, n = src + ".corrupt", 1
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.corrupt{n}"
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"arsp_move_aside_{step}")
    if jax.process_index() == 0 and os.path.exists(src):
      os.rename(src, dst)
    return dst

  def close(self) -> None:
    self.manager.close()
