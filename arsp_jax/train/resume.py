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
from arsp_jax.errors import CheckpointError, CheckpointMismatch, ConfigError
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
  a: dict,
  b: dict,
  prefix: str = "",
  common_only: bool = False,
  defaults: dict | None = None,
  ignore: frozenset | set = RESUMABLE_KEYS,
) -> list[str]:
  """``'key: old -> new'`` for every differing key (but those a resumed run may change);
  ``common_only``: only keys both configs have (keys added to the code since ``a`` was written
  are not differences); ``defaults`` (the base configuration, as JSON): a key ``a`` lacks whose
  new value is its default is not a difference either (a key added since ``a`` was written,
  left at the default that keeps the old behaviour); ``ignore``: the dotted keys that may
  differ (default: ``RESUMABLE_KEYS``)."""
  out = []
  keys = set(a) & set(b) if common_only else set(a) | set(b)
  for k in sorted(keys):
    key = prefix + k
    if key in ignore:
      continue
    va, vb = a.get(k), b.get(k)
    dv = defaults.get(k) if isinstance(defaults, dict) else None
    if isinstance(va, dict) and isinstance(vb, dict):
      dv = dv if isinstance(dv, dict) else None
      out += config_diff(va, vb, key + ".", common_only, dv, ignore)
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


def read_config_json(
  path: str, action: str = "resume it", fix: str = "pass a new --workdir"
) -> dict:
  """A run's ``config.json`` as a dict; ``ConfigError`` naming the file when it cannot be read
  or is not a JSON object (``action``: what is refused, ``fix``: what to do, for the message)."""
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    raise ConfigError(
      f"{path} cannot be read ({type(e).__name__}: {e}), so this workdir's configuration is "
      f"unknown. Refusing to {action}: {fix} (or delete the damaged workdir)."
    ) from None
  if not isinstance(out, dict):
    raise ConfigError(f"{path} does not hold a configuration. Refusing to {action}: {fix}.")
  return out


#: Keys that may differ when a *finished* run is rerun (it prints its results.json and writes
#: nothing): the resumable keys, which say how a run executes, but ``data_dir``: the results
#: were measured on the data at that path, and another path may hold other data.
FINISHED_IGNORED_KEYS = RESUMABLE_KEYS - {"data_dir"}


def finished_results(cfg: ml_collections.ConfigDict, wd: str) -> dict | None:
  """The results of the finished run in ``wd`` (its ``results.json``) when ``cfg`` is its
  configuration, None when ``wd`` holds no finished run; ``ConfigError`` when it holds one of
  another configuration (``data_dir`` included: ``FINISHED_IGNORED_KEYS``) or a damaged one.
  A finished workdir is never written again."""
  res_path, cfg_path = os.path.join(wd, "results.json"), os.path.join(wd, "config.json")
  if not os.path.lexists(res_path):
    return None
  if os.path.lexists(cfg_path):
    old = as_json(read_config_json(cfg_path, action="rerun it"))
  else:
    old = _checkpoint_config(wd)
  if old is None:
    raise ConfigError(
      f"The workdir {wd} holds a results.json but neither config.json nor a readable "
      f"checkpoint, so the finished run's configuration is unknown. It is left as it is: "
      f"pass a new --workdir."
    )
  new = as_json(cfg.to_dict())
  defaults = as_json(base.get_config().to_dict())
  diff = config_diff(old, new, defaults=defaults, ignore=FINISHED_IGNORED_KEYS)
  if diff:
    raise ConfigError(
      f"The workdir {wd} holds a finished run with a different configuration ("
      + "; ".join(diff[:6])
      + (" ..." if len(diff) > 6 else "")
      + "). A finished workdir is never changed: pass a new --workdir, or the original flags "
      "to see its results (eval.py --data_dir evaluates it on data at another path)."
    )
  try:
    with open(res_path) as f:
      results = json.load(f)
    if not isinstance(results, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError, RecursionError) as e:
    raise ConfigError(
      f"{res_path} cannot be read ({type(e).__name__}: {e}). Delete it to recompute it from "
      f"the run's last checkpoint (rerun the same command), or pass a new --workdir."
    ) from None
  return results


def refuse_other_config(wd: str, old: dict, new: dict, error: type) -> None:
  diff = config_diff(as_json(old), new, defaults=as_json(base.get_config().to_dict()))
  if diff:
    raise error(
      f"The workdir {wd} holds a run with a different configuration ("
      + "; ".join(diff[:6])
      + (" ..." if len(diff) > 6 else "")
      + "). Refusing to resume it: pass a new --workdir, or the original flags to resume."
    )


def _checkpoint_config(wd: str) -> dict | None:
  """The configuration recorded in the newest checkpoint of ``wd`` (None if none is readable)."""
  ck_dir = os.path.join(wd, "checkpoints")
  if not os.path.isdir(ck_dir):
    return None
  ck = ckpt_lib.Checkpointer(ck_dir)
  try:
    if ck.latest_step() is None:
      return None
    meta = ck.restore_meta()
  except CheckpointError:
    return None
  finally:
    ck.close()
  return as_json(meta["config"]) if isinstance(meta.get("config"), dict) else None


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
  other = read_config_json(
    cfg_path, action=f"start from --init_from={path}", fix="pass another finished dense run"
  )
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
