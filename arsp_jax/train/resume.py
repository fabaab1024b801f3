"""Where a run starts: checks on the workdir, then its latest checkpoint, ``init_from`` or nothing.

Nothing here writes: ``check_workdir`` and ``check_workdir_config`` run before the data is
loaded, ``restore_or_initialise`` before the loop writes anything, so a refused run leaves an
existing workdir as it was. ``config_diff`` lists what differs between two configurations,
ignoring the keys a resumed run may change (``RESUMABLE_KEYS``).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import ml_collections

from arsp_jax.configs import base
from arsp_jax.errors import CheckpointMismatch, ConfigError
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train.pipeline import Pipeline
from arsp_jax.train.run_state import RunState

# Keys that may differ between the run that wrote a workdir and one resuming it.
RESUMABLE_KEYS = {
  "data_dir",
  "log_every",
  "keep_checkpoints",
  "distributed",
  "eval_batch_size",
  "num_devices",
  "nan_policy",
  "checkpoint_every_steps",
  "input_workers",  # the batches do not depend on how many processes decode them
  "steps_per_window",  # the same steps, compiled k at a time (float-rounding differences)
}


def config_diff(
  a: dict, b: dict, prefix: str = "", common_only: bool = False, defaults: dict | None = None
) -> list[str]:
  """``'key: old -> new'`` for every differing key (but those a resumed run may change);
  ``common_only``: only keys both configs have (keys added to the code since ``a`` was written
  are not differences); ``defaults`` (the base configuration, as JSON): a key ``a`` lacks whose
  new value is its default is not a difference either (a key added since ``a`` was written,
  left at the default that keeps the old behaviour)."""
  out = []
  keys = set(a) & set(b) if common_only else set(a) | set(b)
  for k in sorted(keys):
    key = prefix + k
    if key in RESUMABLE_KEYS:
      continue
    va, vb = a.get(k), b.get(k)
    dv = defaults.get(k) if isinstance(defaults, dict) else None
    if isinstance(va, dict) and isinstance(vb, dict):
      out += config_diff(va, vb, key + ".", common_only, dv if isinstance(dv, dict) else None)
    elif k not in a and isinstance(defaults, dict) and k in defaults and _norm(vb) == _norm(dv):
      continue
    elif _norm(va) != _norm(vb):
      out.append(f"{key}: {va!r} -> {vb!r}")
  return out


def as_json(v):
  """``v`` as JSON would store it (tuples become lists)."""
  return json.loads(json.dumps(v))


def _norm(v):
  if isinstance(v, (list, tuple)):
    return [_norm(x) for x in v]
  return v


def check_workdir(wd: str) -> None:
  """ConfigError unless ``wd`` is (or can be created as) a readable, writable directory."""
  if os.path.exists(wd) and not os.path.isdir(wd):
    raise ConfigError(
      f"--workdir={wd} exists and is not a directory. Pass a directory (a path that does not "
      f"exist yet is created)."
    )
  if os.path.isdir(wd):
    bad = [
      p
      for p in (wd, os.path.join(wd, "checkpoints"))
      if os.path.isdir(p) and not os.access(p, os.R_OK | os.W_OK | os.X_OK)
    ]
    bad += [
      p
      for p in (os.path.join(wd, "config.json"),)
      if os.path.exists(p) and not os.access(p, os.R_OK)
    ]
    if bad:
      raise ConfigError(
        f"--workdir={wd} cannot be read and written by this user ({', '.join(bad)}: "
        f"permission denied). Fix the permissions (e.g. chmod -R u+rwX {wd}) or pass another "
        f"--workdir."
      )
    return
  parent = os.path.dirname(wd)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(
      f"--workdir={wd} cannot be created: {parent} is not a writable directory. Pass a "
      f"--workdir under a directory you can write to."
    )


def check_workdir_config(cfg: ml_collections.ConfigDict, wd: str) -> None:
  """``check_workdir``, and a ConfigError if ``wd`` holds checkpoints of another configuration."""
  check_workdir(wd)
  cfg_path, ck_dir = os.path.join(wd, "config.json"), os.path.join(wd, "checkpoints")
  has_ckpt = os.path.isdir(ck_dir) and any(n.isdigit() for n in os.listdir(ck_dir))
  if has_ckpt and os.path.exists(cfg_path):
    refuse_other_config(wd, read_config_json(cfg_path), as_json(cfg.to_dict()), ConfigError)


def read_config_json(path: str) -> dict:
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(
      f"{path} cannot be read ({type(e).__name__}: {e}), so this workdir's configuration is "
      f"unknown. Refusing to resume it: pass a new --workdir (or delete the damaged workdir)."
    ) from e
  if not isinstance(out, dict):
    raise ConfigError(
      f"{path} does not hold a configuration. Refusing to resume: pass a new --workdir."
    )
  return out


def refuse_other_config(wd: str, old: dict, new: dict, error: type) -> None:
  diff = config_diff(as_json(old), new, defaults=as_json(base.get_config().to_dict()))
  if diff:
    raise error(
      f"The workdir {wd} holds a run with a different configuration ("
      + "; ".join(diff[:6])
      + (" ..." if len(diff) > 6 else "")
      + "). Refusing to resume it: pass a new --workdir, or the original flags to resume."
    )


def restore_init_from(pipe: Pipeline, path: str):
  """Params and batchnorm statistics of a finished dense run in another workdir."""
  path = os.path.abspath(path)
  cfg_path = os.path.join(path, "config.json")
  ck_dir = os.path.join(path, "checkpoints")
  if not os.path.isdir(ck_dir) or not os.path.exists(cfg_path):
    raise ConfigError(
      f"--init_from={path} is not a workdir of a dense run (no checkpoints/ or config.json). "
      f"Train one first: python train.py --method=dense --workdir={path}"
    )
  with open(cfg_path) as f:
    other = json.load(f)
  mine_all = as_json(pipe.cfg.to_dict())
  for key in ("dataset", "model", "model_kwargs"):
    mine = mine_all[key]
    if as_json(other.get(key)) != mine:
      raise ConfigError(
        f"--init_from={path} was trained with {key}={other.get(key)!r}, this run uses "
        f"{key}={mine!r}. Use matching flags or another dense run."
      )
  ck = ckpt_lib.Checkpointer(ck_dir)
  meta = ck.restore_meta()
  if meta["phase"] != "dense":
    raise ConfigError(
      f"--init_from={path}: its latest checkpoint is from phase {meta['phase']!r}, not a dense run."
    )
  template = pipe.fresh_state("dense")
  state = ck.restore_state(template)
  ck.close()
  return state, meta


def restore_or_initialise(pipe: Pipeline, log: Callable[[str], None]) -> RunState:
  """The run's starting point: its workdir's newest readable checkpoint (mid-epoch ones
  included), else the dense run of ``init_from``, else nothing (the loop starts from the
  initial variables)."""
  run = RunState(pipe=pipe, config_json=as_json(pipe.cfg.to_dict()))
  if _restore_latest(run, log):
    return run
  if pipe.cfg.init_from:
    run.train_state, _ = restore_init_from(pipe, pipe.cfg.init_from)
    run.state_phase = "dense"
    run.dense_test_accuracy = pipe.evaluate(run.train_state, "test")["accuracy"]
    log(
      f"Initialised from {pipe.cfg.init_from}: dense test accuracy "
      f"{100 * run.dense_test_accuracy:.2f}%"
    )
  return run


def _restore_latest(run: RunState, log: Callable[[str], None]) -> bool:
  pipe, wd = run.pipe, run.pipe.workdir
  ck_dir = os.path.join(wd, "checkpoints")
  phase_names = [p for p, _ in pipe.phases]

  def template_for(m: dict):
    if isinstance(m.get("config"), dict):
      refuse_other_config(wd, m["config"], run.config_json, CheckpointMismatch)
    if m.get("phase") not in phase_names:
      raise CheckpointMismatch(
        f"The workdir {wd} has a checkpoint from phase {m.get('phase')!r}, which this run "
        f"({pipe.cfg.method}) does not have. Use a new --workdir."
      )
    return pipe.fresh_state(m["phase"])

  if not os.path.isdir(ck_dir):
    return False
  reader = ckpt_lib.Checkpointer(ck_dir, max_to_keep=pipe.cfg.keep_checkpoints)
  try:
    found = reader.restore_latest(template_for, log=log)
  finally:
    reader.close()
  if found is None:
    return False
  latest, meta, run.train_state = found
  run.state_phase, run.resumed = meta["phase"], True
  run.history = meta.get("history", run.history)
  run.dense_test_accuracy = meta.get("dense_test_accuracy")
  run.train_seconds = meta.get("train_seconds", 0.0)
  run.phase_idx = phase_names.index(meta["phase"])
  run.epoch, run.step = int(meta["phase_epoch"]), int(meta.get("step_in_epoch", 0))
  run.partial = meta.get("partial") if run.step else None
  where = f"{run.epoch} epoch(s)" + (f" and {run.step} step(s)" if run.step else "")
  log(f"Resuming from {ck_dir} (checkpoint {latest}: phase {meta['phase']}, {where} done).")
  return True
