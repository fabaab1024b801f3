"""The training pipeline: dense BNN -> ARSP rounds -> fine-tuning -> evaluation.

``run(config, workdir)`` drives the compiled steps of ``step.py`` over the data
of ``data.py``, saves a checkpoint at the end of every epoch (resuming from the
latest one when rerun with the same workdir), writes TensorBoard scalars under
``<workdir>/tb`` and ``<workdir>/results.json`` (atomically) at the end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from arsp_jax import configs as config_lib
from arsp_jax import data as data_lib
from arsp_jax import models
from arsp_jax.errors import Preempted, TrainingError
from arsp_jax.export import summary as report
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import phases
from arsp_jax.train import step as step_lib

# Keys that may differ between the run that wrote a workdir and one resuming it.
_RESUMABLE_KEYS = {
  "data_dir",
  "log_every",
  "keep_checkpoints",
  "distributed",
  "eval_batch_size",
  "num_devices",
  "nan_policy",
  "checkpoint_every_steps",
}


_STEP_CACHE: dict = {}  # compiled steps shared by the Pipelines of one process (FIFO)
_STEP_CACHE_SIZE = 24


def _config_diff(a: dict, b: dict, prefix: str = "", common_only: bool = False) -> list[str]:
  """``'key: old -> new'`` for every differing key (but those a resumed run may change);
  ``common_only``: only keys both configs have (keys added to the code since ``a`` was written
  are not differences)."""
  out = []
  keys = set(a) & set(b) if common_only else set(a) | set(b)
  for k in sorted(keys):
    key = prefix + k
    if key in _RESUMABLE_KEYS:
      continue
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, key + ".", common_only)
    elif _norm(va) != _norm(vb):
      out.append(f"{key}: {va!r} -> {vb!r}")
  return out


def _as_json(v):
  """``v`` as JSON would store it (tuples become lists)."""
  return json.loads(json.dumps(v))


def _norm(v):
  if isinstance(v, (list, tuple)):
    return [_norm(x) for x in v]
  return v


class Pipeline:
  """Everything a run needs, built once from the config."""

  def __init__(
    self,
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
  ):
    config_lib.validate(cfg)
    self.cfg = cfg
    self.workdir = os.path.abspath(workdir)
    self.progress = progress and jax.process_index() == 0
    self.log = log if jax.process_index() == 0 else (lambda *_: None)
    devices = jax.devices()
    if cfg.num_devices:
      if cfg.num_devices > len(devices) or jax.process_count() > 1:
        raise config_lib.ConfigError(
          f"num_devices={cfg.num_devices} but this process sees {len(devices)} device(s) "
          f"(num_devices applies to single-process runs); use 0 for all devices."
        )
      devices = devices[: cfg.num_devices]
    self.mesh = step_lib.make_mesh(devices)
    self.num_devices = len(devices)
    data_lib.check_batch_size(cfg.batch_size, self.num_devices)
    self.eval_batch_size = max(
      self.num_devices, (cfg.eval_batch_size // self.num_devices) * self.num_devices
    )
    self.dataset = data_lib.load_dataset(
      cfg.dataset,
      cfg.data_dir or None,
      val_size=cfg.val_size,
      seed=cfg.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      **dict(cfg.dataset_kwargs),
    )
    self.model = models.get_model(cfg.model, self.dataset.num_classes, **dict(cfg.model_kwargs))
    self.steps_per_epoch = self.dataset.steps_per_epoch(cfg.batch_size)
    if self.steps_per_epoch < 1:
      raise config_lib.ConfigError(
        f"--batch_size={cfg.batch_size} is larger than the training split "
        f"({self.dataset.num_train} examples); lower it."
      )
    rng = jax.random.PRNGKey(cfg.seed)
    r_init, r_state = jax.random.split(rng)
    self.r_state = np.asarray(jax.device_get(r_state))
    # Kept on the host: every state built from them gets fresh device buffers, which the
    # compiled steps may donate.
    self.variables = jax.device_get(
      jax.jit(lambda r: models.init_variables(self.model, r, self.dataset.image_shape))(r_init)
    )
    self.info = step_lib.LayerInfo.from_masks(self.variables["masks"])
    if methods_lib.get(cfg.method) is not None and self.info.num_layers == 0:
      raise config_lib.ConfigError(f"Model {cfg.model!r} has no binary (prunable) layers.")
    self.rc = phases.round_config(cfg, self.steps_per_epoch)
    self.phases = phases.plan_phases(cfg)
    self._compiled: dict = {}
    self.aux = None

  # -- compiled steps ---------------------------------------------------------
  def steps(self, phase: str):
    if phase not in self._compiled:
      skip = self.cfg.get("nan_policy") == "skip"
      # Runs in one process (a study, the tests) with the same model, optimizer and round
      # settings reuse the compiled steps instead of tracing and compiling them again.
      key = (
        phase,
        repr(self.model),
        self.info,
        self.rc if phase == "arsp" else None,
        phases.optimizer_key(self.cfg, phase, self.steps_per_epoch),
        skip,
        tuple(d.id for d in self.mesh.devices.flat),
      )
      if key not in _STEP_CACHE:
        tx = phases.phase_optimizer(self.cfg, phase, self.steps_per_epoch)
        fns = step_lib.make_step_fns(self.model, tx, self.info, self.rc, skip_nonfinite=skip)
        if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
          _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        _STEP_CACHE[key] = (tx, step_lib.compile_steps(fns, self.mesh))
      self._compiled[phase] = _STEP_CACHE[key]
    return self._compiled[phase]

  def fresh_state(self, phase: str):
    """The state at the start of ``phase`` from the initial variables (also a restore template)."""
    tx, _ = self.steps(phase)
    dense_tx, _ = self.steps("dense") if phase != "dense" else (tx, None)
    state = step_lib.create_state(self.variables, dense_tx, self.r_state)
    if phase != "dense":
      state = step_lib.start_phase(state, phase, tx, self.info, self.rc)
    return step_lib.replicate(state, self.mesh)

  def aux_batches(self):
    """Fixed calibration (train) and reward (validation) sets, resident on the devices."""
    if self.aux is None:
      n = self.num_devices
      a = self.cfg.arsp
      calib = self.dataset.fixed_batch("train", max(n, (a.calib_size // n) * n), self.cfg.seed)
      split = "val" if self.dataset.num_val > 0 else "train"
      val = self.dataset.fixed_batch(
        split,
        max(n, (min(a.reward_size, max(self.dataset.num_val, n)) // n) * n),
        self.cfg.seed + 1,
      )
      self.aux = step_lib.shard_full_batch(
        {
          "calib": calib["image"],
          "calib_label": calib["label"],
          "val_image": val["image"],
          "val_label": val["label"],
        },
        self.mesh,
      )
    return self.aux

  # -- evaluation -------------------------------------------------------------
  def evaluate(self, state, split: str) -> dict:
    if split == "val" and self.dataset.num_val == 0:
      return {"accuracy": float("nan"), "loss": float("nan"), "count": 0}
    _, steps = self.steps("dense")
    totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for b in self.dataset.eval_batches(split, self.eval_batch_size):
      out = jax.device_get(steps["eval"](state, step_lib.shard_batch(b, self.mesh)))
      for k in totals:
        totals[k] += float(out[k])
    c = max(totals["count"], 1.0)
    return {
      "accuracy": totals["correct"] / c,
      "loss": totals["loss"] / c,
      "count": int(totals["count"]),
    }


def _restore_init_from(pipe: Pipeline, path: str):
  """Params and batchnorm statistics of a finished dense run in another workdir."""
  path = os.path.abspath(path)
  cfg_path = os.path.join(path, "config.json")
  ck_dir = os.path.join(path, "checkpoints")
  if not os.path.isdir(ck_dir) or not os.path.exists(cfg_path):
    raise config_lib.ConfigError(
      f"--init_from={path} is not a workdir of a dense run (no checkpoints/ or config.json). "
      f"Train one first: python train.py --method=dense --workdir={path}"
    )
  with open(cfg_path) as f:
    other = json.load(f)
  mine_all = _as_json(pipe.cfg.to_dict())
  for key in ("dataset", "model", "model_kwargs"):
    mine = mine_all[key]
    if _as_json(other.get(key)) != mine:
      raise config_lib.ConfigError(
        f"--init_from={path} was trained with {key}={other.get(key)!r}, this run uses "
        f"{key}={mine!r}. Use matching flags or another dense run."
      )
  ck = ckpt_lib.Checkpointer(ck_dir)
  meta = ck.restore_meta()
  if meta["phase"] != "dense":
    raise config_lib.ConfigError(
      f"--init_from={path}: its latest checkpoint is from phase {meta['phase']!r}, not a dense run."
    )
  template = pipe.fresh_state("dense")
  state = ck.restore_state(template)
  ck.close()
  return state, meta


def run(
  cfg: ml_collections.ConfigDict,
  workdir: str,
  *,
  progress: bool = True,
  log: Callable[[str], None] = print,
) -> dict:
  """Runs (or resumes) the configured pipeline; returns the results dict.

  Nothing is written to ``workdir`` until the configuration, the data and the checkpoint to
  resume from (if any) have been checked, so a refused run leaves an existing workdir as it was.
  Resuming restores the newest readable checkpoint (``checkpoint.Checkpointer.restore_latest``),
  mid-epoch ones included. SIGTERM (pre-emption) makes the run save a checkpoint after the
  current step and raise :class:`Preempted`. See the README's "Reliability" section.
  """
  from tensorboardX import SummaryWriter
  from tqdm.auto import tqdm

  config_lib.validate(cfg)
  _validate_reliability(cfg)
  wd = os.path.abspath(workdir)
  _check_workdir(wd)
  cfg_dict = cfg.to_dict()
  cfg_json = _as_json(cfg_dict)
  cfg_path = os.path.join(wd, "config.json")
  ck_dir = os.path.join(wd, "checkpoints")
  has_ckpt = os.path.isdir(ck_dir) and any(n.isdigit() for n in os.listdir(ck_dir))
  if has_ckpt and os.path.exists(cfg_path):
    _refuse_other_config(wd, _read_config_json(cfg_path), cfg_json, config_lib.ConfigError)
  pipe = Pipeline(cfg, workdir, progress=progress, log=log)
  phase_names = [p for p, _ in pipe.phases]

  def template_for(m: dict):
    if isinstance(m.get("config"), dict):
      _refuse_other_config(wd, m["config"], cfg_json, ckpt_lib.CheckpointMismatch)
    if m.get("phase") not in phase_names:
      raise ckpt_lib.CheckpointMismatch(
        f"The workdir {wd} has a checkpoint from phase {m.get('phase')!r}, which this run "
        f"({cfg.method}) does not have. Use a new --workdir."
      )
    return pipe.fresh_state(m["phase"])

  history: dict[str, Any] = {"epochs": [], "rounds": []}
  meta: dict[str, Any] = {}
  start_phase_idx, start_epoch, start_step, partial = 0, 0, 0, None
  state = None
  dense_test_acc = None
  train_seconds = 0.0
  spe = pipe.steps_per_epoch
  resumed_gstep = None
  reader = ckpt_lib.Checkpointer(ck_dir, max_to_keep=cfg.keep_checkpoints)
  try:
    resume = reader.restore_latest(template_for, log=log) if os.path.isdir(ck_dir) else None
  finally:
    reader.close()
  if resume is not None:
    latest, meta, state = resume
    history = meta.get("history", history)
    dense_test_acc = meta.get("dense_test_accuracy")
    train_seconds = meta.get("train_seconds", 0.0)
    start_phase_idx = phase_names.index(meta["phase"])
    start_epoch = int(meta["phase_epoch"])
    start_step = int(meta.get("step_in_epoch", 0))
    partial = meta.get("partial")
    resumed_gstep = (
      sum(e for _, e in pipe.phases[:start_phase_idx]) + start_epoch
    ) * spe + start_step
    where = f"{start_epoch} epoch(s)" + (f" and {start_step} step(s)" if start_step else "")
    log(f"Resuming from {ck_dir} (checkpoint {latest}: phase {meta['phase']}, {where} done).")
  elif cfg.init_from:
    state, _ = _restore_init_from(pipe, cfg.init_from)
    dense_test_acc = pipe.evaluate(state, "test")["accuracy"]
    log(f"Initialised from {cfg.init_from}: dense test accuracy {100 * dense_test_acc:.2f}%")

  # Everything is checked: from here on the workdir is written.
  os.makedirs(wd, exist_ok=True)
  report.write_json_atomic(cfg_path, cfg_dict)
  ck = ckpt_lib.Checkpointer(ck_dir, max_to_keep=cfg.keep_checkpoints, cleanup_tmp=True)
  writer = None
  if jax.process_index() == 0:
    # purge_step: TensorBoard drops what a killed run logged after the checkpoint resumed from.
    writer = SummaryWriter(
      os.path.join(wd, "tb"), purge_step=resumed_gstep + 1 if resumed_gstep is not None else None
    )
  skip = cfg.get("nan_policy", "stop") == "skip"
  faults = _Faults.from_env()
  preempt = _Preemption()
  preempt.install()

  def save(gstep: int, phase: str, phase_epoch: int, step_in_epoch: int = 0, part=None):
    m = {
      "phase": phase,
      "phase_epoch": phase_epoch,
      "step_in_epoch": step_in_epoch,
      "history": history,
      "dense_test_accuracy": dense_test_acc,
      "train_seconds": train_seconds,
      "config": cfg_json,
    }
    if part is not None:
      m["partial"] = part
    ck.save(gstep, state, m)

  try:
    for pi in range(start_phase_idx, len(pipe.phases)):
      phase, n_epochs = pipe.phases[pi]
      tx, steps = pipe.steps(phase)
      first_epoch = start_epoch if pi == start_phase_idx else 0
      if state is None:
        state = pipe.fresh_state(phase)
      elif first_epoch == 0 and not (
        pi == start_phase_idx and resume is not None and meta.get("phase") == phase
      ):
        if phase != "dense":
          state = step_lib.replicate(
            step_lib.start_phase(state, phase, tx, pipe.info, pipe.rc), pipe.mesh
          )
      if n_epochs == 0 and phase != "dense":
        continue
      aux = pipe.aux_batches() if phase == "arsp" else None
      base = sum(e for _, e in pipe.phases[:pi])
      for epoch in range(first_epoch, n_epochs):
        global_epoch = base + epoch
        mid = pi == start_phase_idx and epoch == start_epoch and start_step > 0
        s0 = start_step if mid else 0
        part = (partial or {}) if mid else {}
        sums = dict(part.get("sums") or {"loss": 0.0, "accuracy": 0.0, "n": 0})
        t0 = time.time() - float(part.get("seconds", 0.0))
        tracker = _NonFinite(int(part.get("skipped", 0)))
        bar = tqdm(
          total=spe,
          initial=s0,
          desc=f"{phase} {epoch + 1}/{n_epochs}",
          disable=not pipe.progress,
          leave=False,
          dynamic_ncols=True,
          mininterval=1.0,
        )
        last_round = history["rounds"][-1] if history["rounds"] else None
        batches = pipe.dataset.train_batches(global_epoch, cfg.batch_size, cfg.seed, start_step=s0)
        for i, b in enumerate(batches, start=s0):
          b = faults.batch(phase, epoch + 1, i + 1, b)
          batch = step_lib.shard_batch(b, pipe.mesh)
          if phase == "arsp":
            state, m = steps["arsp"](state, batch, aux)
          else:
            state, m = steps["train"](state, batch)
          phase_step = epoch * spe + i + 1
          tb_step = global_epoch * spe + i + 1
          tracker.update(m["finite"], phase_step)
          # The round ran at the start of this step (input step = phase_step - 1).
          is_round = (
            phase == "arsp" and phase_step > 1 and (phase_step - 1) % cfg.arsp.prune_every == 0
          )
          log_point = is_round or (i + 1) % cfg.log_every == 0 or i + 1 == spe
          if log_point:
            m = jax.device_get(m)
            if not skip:
              tracker.check(ck, phase, epoch, spe)
            if bool(m["finite"]):
              sums["loss"] += float(m["loss"])
              sums["accuracy"] += float(m["accuracy"])
              sums["n"] += 1
            if writer is not None:
              writer.add_scalar(f"{phase}/loss", float(m["loss"]), tb_step)
              writer.add_scalar(f"{phase}/accuracy", float(m["accuracy"]), tb_step)
              writer.add_scalar(
                f"{phase}/learning_rate",
                float(phases.phase_schedule(cfg, phase, spe)(phase_step - 1)),
                tb_step,
              )
            if is_round:
              last_round = _record_round(history, m, pipe, phase_step, writer, tb_step)
            post = {"loss": f"{float(m['loss']):.3f}", "acc": f"{float(m['accuracy']):.3f}"}
            if last_round is not None and phase == "arsp":
              post["sparsity"] = f"{1 - last_round['density_after']:.3f}"
              post["reward"] = f"{last_round['reward']:.3f}"
            bar.set_postfix(post, refresh=False)
          bar.update(1)
          faults.after_step(phase, epoch + 1, i + 1)
          if i + 1 < spe:
            stop = preempt.requested(sync_point=log_point)
            every = cfg.get("checkpoint_every_steps", 0)
            if stop or (every and tb_step % every == 0):
              if not skip:
                tracker.check(ck, phase, epoch, spe)
              save(
                tb_step,
                phase,
                epoch,
                i + 1,
                {"sums": sums, "seconds": time.time() - t0, "skipped": tracker.count()},
              )
              if stop:
                raise Preempted(
                  f"pre-empted (SIGTERM): saved checkpoint {tb_step} at {phase} epoch "
                  f"{epoch + 1} step {i + 1}/{spe} in {ck.directory}. Rerun the same command "
                  f"to resume from it."
                )
        bar.close()
        seconds = time.time() - t0
        train_seconds += seconds
        skipped = tracker.count()
        if skip and skipped >= spe:
          raise TrainingError(
            f"Every step of {phase} epoch {epoch + 1} had a non-finite loss or gradient and was "
            f"skipped (nan_policy=skip); the weights are those of the last good step. Lower "
            f"the learning rate or check the input data, then rerun."
          )
        val = pipe.evaluate(state, "val")
        density = float(jax.device_get(step_lib.overall_density(state.masks, pipe.info)))
        rec = {
          "phase": phase,
          "epoch": epoch + 1,
          "train_loss": sums["loss"] / max(sums["n"], 1),
          "train_accuracy": sums["accuracy"] / max(sums["n"], 1),
          "val_accuracy": val["accuracy"],
          "sparsity": 1.0 - density,
          "seconds": seconds,
        }
        if skip:
          rec["skipped_steps"] = skipped
        history["epochs"].append(rec)
        if writer is not None:
          writer.add_scalar(f"{phase}/val_accuracy", val["accuracy"], (global_epoch + 1) * spe)
          writer.add_scalar("sparsity", 1.0 - density, (global_epoch + 1) * spe)
          if skip:
            writer.add_scalar(f"{phase}/skipped_steps", skipped, (global_epoch + 1) * spe)
          writer.flush()
        log(
          f"[{phase} {epoch + 1}/{n_epochs}] loss {rec['train_loss']:.4f} "
          f"train acc {100 * rec['train_accuracy']:.2f}% val acc {100 * val['accuracy']:.2f}% "
          f"sparsity {1 - density:.4f} ({seconds:.1f} s)"
          + (f", {skipped} non-finite step(s) skipped" if skipped else "")
        )
        if phase == "dense" and epoch + 1 == n_epochs:
          dense_test_acc = pipe.evaluate(state, "test")["accuracy"]
          log(f"Dense test accuracy: {100 * dense_test_acc:.2f}%")
        gstep = (global_epoch + 1) * spe
        save(gstep, phase, epoch + 1)
        if preempt.requested(sync_point=True):
          raise Preempted(
            f"pre-empted (SIGTERM): saved checkpoint {gstep} at the end of {phase} epoch "
            f"{epoch + 1} in {ck.directory}. Rerun the same command to resume from it."
          )
      start_epoch = 0

    if writer is not None:
      writer.close()
      writer = None
    results = finish(pipe, state, history, dense_test_acc, train_seconds)
    report.write_json_atomic(os.path.join(wd, "results.json"), results)
  finally:
    preempt.restore()
    if writer is not None:
      writer.close()
    ck.close()
  return results


def _validate_reliability(cfg) -> None:
  """Checks the keys this module adds to the config (``nan_policy``, ``checkpoint_every_steps``)."""
  if cfg.get("nan_policy", "stop") not in ("stop", "skip"):
    raise config_lib.ConfigError(
      f"nan_policy must be 'stop' (end the run at a non-finite loss or gradient) or 'skip' "
      f"(skip such steps), got {cfg.get('nan_policy')!r}."
    )
  every = cfg.get("checkpoint_every_steps", 0)
  if not isinstance(every, int) or isinstance(every, bool) or every < 0:
    raise config_lib.ConfigError(
      f"checkpoint_every_steps must be a non-negative integer (0 = only at epoch ends), got "
      f"{every!r}."
    )


def _check_workdir(wd: str) -> None:
  """ConfigError unless ``wd`` is (or can be created as) a readable, writable directory."""
  if os.path.exists(wd) and not os.path.isdir(wd):
    raise config_lib.ConfigError(
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
      raise config_lib.ConfigError(
        f"--workdir={wd} cannot be read and written by this user ({', '.join(bad)}: "
        f"permission denied). Fix the permissions (e.g. chmod -R u+rwX {wd}) or pass another "
        f"--workdir."
      )
    return
  parent = os.path.dirname(wd)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise config_lib.ConfigError(
      f"--workdir={wd} cannot be created: {parent} is not a writable directory. Pass a "
      f"--workdir under a directory you can write to."
    )


def _read_config_json(path: str) -> dict:
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise config_lib.ConfigError(
      f"{path} cannot be read ({type(e).__name__}: {e}), so this workdir's configuration is "
      f"unknown. Refusing to resume it: pass a new --workdir (or delete the damaged workdir)."
    ) from e
  if not isinstance(out, dict):
    raise config_lib.ConfigError(
      f"{path} does not hold a configuration. Refusing to resume: pass a new --workdir."
    )
  return out


def _refuse_other_config(wd: str, old: dict, new: dict, error: type) -> None:
  diff = _config_diff(_as_json(old), new)
  if diff:
    raise error(
      f"The workdir {wd} holds a run with a different configuration ("
      + "; ".join(diff[:6])
      + (" ..." if len(diff) > 6 else "")
      + "). Refusing to resume it: pass a new --workdir, or the original flags to resume."
    )


@jax.jit
def _track_nonfinite(count, first, finite, step):
  bad = jnp.logical_not(finite)
  return count + bad.astype(jnp.int32), jnp.where((first < 0) & bad, step, first)


class _NonFinite:
  """Counts non-finite steps on the device (no host sync per step); remembers the first one."""

  def __init__(self, count: int = 0):
    self._count = jnp.asarray(count, jnp.int32)
    self._first = jnp.asarray(-1, jnp.int32)

  def update(self, finite, phase_step: int) -> None:
    self._count, self._first = _track_nonfinite(
      self._count, self._first, finite, np.int32(phase_step)
    )

  def count(self) -> int:
    return int(jax.device_get(self._count))

  def check(self, ck: ckpt_lib.Checkpointer, phase: str, epoch: int, spe: int) -> None:
    """nan_policy=stop: TrainingError naming the first non-finite step and the last checkpoint."""
    first = int(jax.device_get(self._first))
    if first < 0:
      return
    last = ck.latest_step()
    raise TrainingError(
      f"Non-finite loss or gradient at {phase} step {first} (epoch {(first - 1) // spe + 1}, "
      f"step {(first - 1) % spe + 1} of {spe}). Nothing was saved from this step on; the last "
      f"good checkpoint is "
      + (
        f"#{last} in {ck.directory}, which a rerun resumes from"
        if last is not None
        else "none (the run starts over when rerun)"
      )
      + ". Lower the learning rate or check the input data, then rerun; or pass "
      "--nan_policy=skip to skip such steps."
    )


class _Preemption:
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
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.flag))))


class _Faults:
  """Fault injection for the crash tests, from ``$ARSP_FAULT`` (unset: does nothing).

  ``kill:<phase>:<epoch>:<step>``  SIGKILL this process after that step (1-based, in the phase's
                                   epoch), before any checkpoint of that step is written;
  ``term:<phase>:<epoch>:<step>``  send this process SIGTERM there (pre-emption);
  ``nan:<phase>:<epoch>:<step>``   replace that step's images with NaN;
  ``kill-save:<n>``                SIGKILL during the n-th checkpoint save (checkpoint.py).
  """

  def __init__(self, kind: str = "", where: tuple = ()):
    self.kind, self.where = kind, where

  @classmethod
  def from_env(cls) -> _Faults:
    spec = os.environ.get(ckpt_lib.FAULT_ENV, "")
    parts = spec.split(":")
    if len(parts) == 4 and parts[0] in ("kill", "term", "nan"):
      return cls(parts[0], (parts[1], int(parts[2]), int(parts[3])))
    return cls()

  def batch(self, phase: str, epoch: int, step: int, b: dict) -> dict:
    if self.kind == "nan" and (phase, epoch, step) == self.where:
      b = dict(b, image=np.full_like(b["image"], np.nan))
    return b

  def after_step(self, phase: str, epoch: int, step: int) -> None:
    if self.kind in ("kill", "term") and (phase, epoch, step) == self.where:
      os.kill(os.getpid(), signal.SIGKILL if self.kind == "kill" else signal.SIGTERM)


def _record_round(history, m, pipe: Pipeline, phase_step: int, writer, tb_step: int) -> dict:
  ratios = [float(x) for x in np.asarray(m["keep_ratios"])]
  dens = [float(x) for x in np.asarray(m["layer_density"])]
  rec = {
    "round": len(history["rounds"]) + 1,
    "step": phase_step,
    "reward": float(m["round_reward"]),
    "accuracy": float(m["round_accuracy"]),
    "density_before": float(m["round_density"]),
    "density_after": float(m["new_density"]),
    "keep_ratios": ratios,
    "layer_density": dens,
    # The controller's own metrics (the agent: candidate rewards, policy loss, sigma, ...).
    "controller": {k: float(v) for k, v in m["controller"].items()},
  }
  history["rounds"].append(rec)
  if writer is not None:
    writer.add_scalar("arsp/reward", rec["reward"], tb_step)
    writer.add_scalar("arsp/round_accuracy", rec["accuracy"], tb_step)
    writer.add_scalar("arsp/sparsity", 1 - rec["density_after"], tb_step)
    for k, v in rec["controller"].items():
      writer.add_scalar(f"controller/{k}", v, tb_step)
    for name, r, d in zip(pipe.info.paths, ratios, dens):
      layer = name.rsplit("/", 1)[0]
      writer.add_scalar(f"keep_ratio/{layer}", r, tb_step)
      writer.add_scalar(f"layer_sparsity/{layer}", 1 - d, tb_step)
  return rec


def finish(pipe: Pipeline, state, history, dense_test_acc, train_seconds) -> dict:
  cfg = pipe.cfg
  test = pipe.evaluate(state, "test")
  val = pipe.evaluate(state, "val")
  host = jax.device_get(
    {"params": state.params, "masks": state.masks, "batch_stats": state.batch_stats}
  )
  from arsp_jax.export import compress

  summary = report.model_summary(
    host["params"],
    host["masks"],
    host["batch_stats"],
    compress.scale_layer_names(pipe.model, pipe.dataset.image_shape),
  )
  layer_sparsity = {
    l["name"].rsplit("/", 1)[0]: l["sparsity"] for l in summary["layers"] if l["binary"]
  }
  sparsity = summary["sparsity"]
  v = val["accuracy"] if not math.isnan(val["accuracy"]) else test["accuracy"]
  hs = cfg.hyperscore
  results = {
    "dataset": cfg.dataset,
    "model": cfg.model,
    "method": cfg.method,
    "seed": cfg.seed,
    "epochs": cfg.epochs,
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "val_accuracy": val["accuracy"],
    "params": summary["prunable_connections"],
    "kept_connections": summary["kept_connections"],
    "sparsity": sparsity,
    "layer_sparsity": layer_sparsity,
    "train_seconds": train_seconds,
    "devices": pipe.num_devices,
    "processes": jax.process_count(),
    "dense_test_accuracy": dense_test_acc if cfg.method != "dense" else test["accuracy"],
    "hyperscore": report.hyperscore(v, sparsity, hs.beta0, hs.gamma, hs.kappa),
    "size": summary,
    "history": history,
    "config": cfg.to_dict(),
  }
  method = methods_lib.get(cfg.method)
  if method is not None:
    rounds = history["rounds"]
    rc = pipe.rc
    results.update(
      {
        "score": rc.score,
        "granularity": cfg.arsp.granularity,
        "controller": rc.controller,
        "schedule": method.schedule,
        "temperature": rc.temperature,
        "target_sparsity": 0.0 if method.controller == "none" else cfg.arsp.target_sparsity,
        "keep_ratios": {
          "layers": [p.rsplit("/", 1)[0] for p in pipe.info.paths],
          "per_round": [r["keep_ratios"] for r in rounds],
        },
        "agent": {
          "rounds": len(rounds),
          "ppo_updates": len(rounds) if pipe.rc.controller == "ppo" else 0,
          "final_mean_reward": float(np.mean([r["reward"] for r in rounds[-4:]]))
          if rounds
          else None,
          "final_keep_ratios": rounds[-1]["keep_ratios"] if rounds else None,
        },
      }
    )
  return results
