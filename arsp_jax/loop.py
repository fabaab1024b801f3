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
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax

from arsp_jax import checkpoint as ckpt_lib
from arsp_jax import config as config_lib
from arsp_jax import data as data_lib
from arsp_jax import methods as methods_lib
from arsp_jax import models, ppo, report, step as step_lib

# Keys that may differ between the run that wrote a workdir and one resuming it.
_RESUMABLE_KEYS = {"data_dir", "log_every", "keep_checkpoints", "distributed", "eval_batch_size",
                   "num_devices"}


class TrainingError(RuntimeError):
  """A run that cannot continue (non-finite loss, ...); the message names the fix."""


def plan_phases(cfg) -> list[tuple[str, int]]:
  """``[(phase, epochs)]`` in execution order for the configured method."""
  dense_epochs = 0 if cfg.init_from else cfg.epochs
  phases = [("dense", dense_epochs)]
  if methods_lib.get(cfg.method) is not None:
    # Every pruning method (and the unpruned control) runs the same phases: "arsp" is the
    # pruning phase, whichever method sets the masks in it.
    phases += [("arsp", cfg.arsp.epochs), ("finetune", cfg.finetune.epochs)]
  return phases


def round_config(cfg, steps_per_epoch: int) -> step_lib.RoundConfig:
  a = cfg.arsp
  total_steps = a.epochs * steps_per_epoch
  # A round runs at the start of every step whose input has taken a multiple of prune_every
  # updates (never at step 0): steps prune_every, 2*prune_every, ... < total_steps.
  total_rounds = max(total_steps - 1, 0) // a.prune_every
  method = methods_lib.get(cfg.method)
  if method is not None and total_rounds < 1:
    raise config_lib.ConfigError(
        f"The ARSP phase has {total_steps} training steps ({a.epochs} epoch(s) x "
        f"{steps_per_epoch} steps) and prunes after every {a.prune_every} steps, so no pruning round "
        f"would run. Lower --prune_every or raise --prune_epochs.")
  method = method or methods_lib.REGISTRY["arsp"]
  target = a.target_sparsity
  if method.controller in ("uniform", "global") and (target is None or target < 0):
    raise config_lib.ConfigError(
        f"--method={cfg.method} prunes to a fixed --target_sparsity; set one in [0, 1) "
        f"(got {target}).")
  oneshot = method.schedule == "oneshot"
  pc = ppo.PPOConfig(delta=a.delta, rho_min=a.rho_min, lambda_density=a.lambda_density,
                     learning_rate=a.ppo_lr, update_epochs=a.ppo_epochs,
                     entropy_coef=a.entropy_coef, buffer_size=a.ppo_every)
  return step_lib.RoundConfig(
      score=method.score or a.score, granularity=a.granularity,
      temperature=float(a.temperature) if method.sampled else 0.0,
      channel_multiple=int(a.channel_multiple), prune_every=int(a.prune_every),
      grad_ema_decay=float(a.grad_ema_decay),
      per_weight_grads=(a.grad_stats == "weight"
                        or (a.grad_stats == "auto" and a.score != "magnitude")),
      target_density=(1.0 - target) if target is not None and target >= 0 else -1.0,
      budget_rounds=1 if oneshot else max(1, int(math.ceil(a.budget_fraction
                                                             * max(total_rounds, 1)))),
      total_rounds=max(total_rounds, 1), controller=method.controller, oneshot=oneshot, ppo=pc)


def phase_schedule(cfg, phase: str, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate of ``phase`` as a function of the phase's step."""
  if phase == "arsp":
    return optax.constant_schedule(cfg.arsp.learning_rate)
  lr, epochs = ((cfg.learning_rate, cfg.epochs) if phase == "dense"
                else (cfg.finetune.learning_rate, cfg.finetune.epochs))
  total = epochs * steps_per_epoch
  if cfg.lr_schedule == "cosine" and total > 0:
    return optax.cosine_decay_schedule(lr, total)
  return optax.constant_schedule(lr)


def phase_optimizer(cfg, phase: str, steps_per_epoch: int):
  kind = cfg.finetune.optimizer if phase == "finetune" else "adam"
  return step_lib.make_optimizer(kind, phase_schedule(cfg, phase, steps_per_epoch),
                                 momentum=cfg.finetune.momentum)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    key = prefix + k
    if key in _RESUMABLE_KEYS:
      continue
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, key + ".")
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

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
               log: Callable[[str], None] = print):
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
            f"(num_devices applies to single-process runs); use 0 for all devices.")
      devices = devices[:cfg.num_devices]
    self.mesh = step_lib.make_mesh(devices)
    self.num_devices = len(devices)
    data_lib.check_batch_size(cfg.batch_size, self.num_devices)
    self.eval_batch_size = max(self.num_devices,
                               (cfg.eval_batch_size // self.num_devices) * self.num_devices)
    self.dataset = data_lib.load_dataset(
        cfg.dataset, cfg.data_dir or None, val_size=cfg.val_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        **dict(cfg.dataset_kwargs))
    self.model = models.get_model(cfg.model, self.dataset.num_classes, **dict(cfg.model_kwargs))
    self.steps_per_epoch = self.dataset.steps_per_epoch(cfg.batch_size)
    if self.steps_per_epoch < 1:
      raise config_lib.ConfigError(
          f"--batch_size={cfg.batch_size} is larger than the training split "
          f"({self.dataset.num_train} examples); lower it.")
    rng = jax.random.PRNGKey(cfg.seed)
    r_init, r_state = jax.random.split(rng)
    self.r_state = np.asarray(jax.device_get(r_state))
    # Kept on the host: every state built from them gets fresh device buffers, which the
    # compiled steps may donate.
    self.variables = jax.device_get(
        jax.jit(lambda r: models.init_variables(self.model, r, self.dataset.image_shape))(r_init))
    self.info = step_lib.LayerInfo.from_masks(self.variables["masks"])
    if methods_lib.get(cfg.method) is not None and self.info.num_layers == 0:
      raise config_lib.ConfigError(f"Model {cfg.model!r} has no binary (prunable) layers.")
    self.rc = round_config(cfg, self.steps_per_epoch)
    self.phases = plan_phases(cfg)
    self._compiled: dict = {}
    self.aux = None

  # -- compiled steps ---------------------------------------------------------
  def steps(self, phase: str):
    if phase not in self._compiled:
      tx = phase_optimizer(self.cfg, phase, self.steps_per_epoch)
      fns = step_lib.make_step_fns(self.model, tx, self.info, self.rc)
      self._compiled[phase] = (tx, step_lib.compile_steps(fns, self.mesh))
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
      val = self.dataset.fixed_batch(split, max(n, (min(a.reward_size, max(self.dataset.num_val, n))
                                                    // n) * n), self.cfg.seed + 1)
      self.aux = step_lib.shard_full_batch(
          {"calib": calib["image"], "val_image": val["image"], "val_label": val["label"]},
          self.mesh)
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
    return {"accuracy": totals["correct"] / c, "loss": totals["loss"] / c,
            "count": int(totals["count"])}


def _restore_init_from(pipe: Pipeline, path: str):
  """Params and batchnorm statistics of a finished dense run in another workdir."""
  path = os.path.abspath(path)
  cfg_path = os.path.join(path, "config.json")
  ck_dir = os.path.join(path, "checkpoints")
  if not os.path.isdir(ck_dir) or not os.path.exists(cfg_path):
    raise config_lib.ConfigError(
        f"--init_from={path} is not a workdir of a dense run (no checkpoints/ or config.json). "
        f"Train one first: python train.py --method=dense --workdir={path}")
  with open(cfg_path) as f:
    other = json.load(f)
  mine_all = _as_json(pipe.cfg.to_dict())
  for key in ("dataset", "model", "model_kwargs"):
    mine = mine_all[key]
    if _as_json(other.get(key)) != mine:
      raise config_lib.ConfigError(
          f"--init_from={path} was trained with {key}={other.get(key)!r}, this run uses "
          f"{key}={mine!r}. Use matching flags or another dense run.")
  ck = ckpt_lib.Checkpointer(ck_dir)
  meta = ck.restore_meta()
  if meta["phase"] != "dense":
    raise config_lib.ConfigError(f"--init_from={path}: its latest checkpoint is from phase "
                                 f"{meta['phase']!r}, not a dense run.")
  template = pipe.fresh_state("dense")
  state = ck.restore_state(template)
  ck.close()
  return state, meta


def run(cfg: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) the configured pipeline; returns the results dict."""
  from tqdm.auto import tqdm
  from tensorboardX import SummaryWriter

  config_lib.validate(cfg)
  wd = os.path.abspath(workdir)
  cfg_dict = cfg.to_dict()
  cfg_path = os.path.join(wd, "config.json")
  ck_dir = os.path.join(wd, "checkpoints")
  has_ckpt = os.path.isdir(ck_dir) and any(n.isdigit() for n in os.listdir(ck_dir))
  if has_ckpt and os.path.exists(cfg_path):
    with open(cfg_path) as f:
      old = json.load(f)
    diff = _config_diff(_as_json(old), _as_json(cfg_dict))
    if diff:
      raise config_lib.ConfigError(
          f"The workdir {wd} holds a run with a different configuration ("
          + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
          + "). Refusing to resume it: pass a new --workdir, or the original flags to resume.")
  pipe = Pipeline(cfg, workdir, progress=progress, log=log)
  os.makedirs(wd, exist_ok=True)
  ck = ckpt_lib.Checkpointer(ck_dir, max_to_keep=cfg.keep_checkpoints)
  latest = ck.latest_step()
  report.write_json_atomic(cfg_path, cfg_dict)

  history: dict[str, Any] = {"epochs": [], "rounds": []}
  meta: dict[str, Any] = {}
  start_phase_idx, start_epoch = 0, 0
  state = None
  dense_test_acc = None
  train_seconds = 0.0
  if latest is not None:
    meta = ck.restore_meta(latest)
    phase_names = [p for p, _ in pipe.phases]
    if meta.get("phase") not in phase_names:
      raise config_lib.ConfigError(
          f"The workdir {wd} has a checkpoint from phase {meta.get('phase')!r}, which this run "
          f"({cfg.method}) does not have. Use a new --workdir.")
    state = ck.restore_state(pipe.fresh_state(meta["phase"]), latest)
    history = meta.get("history", history)
    dense_test_acc = meta.get("dense_test_accuracy")
    train_seconds = meta.get("train_seconds", 0.0)
    start_phase_idx = phase_names.index(meta["phase"])
    start_epoch = int(meta["phase_epoch"])
    log(f"Resuming from {ck.directory} (checkpoint {latest}: phase {meta['phase']}, "
        f"{start_epoch} epoch(s) done).")
  elif cfg.init_from:
    state, _ = _restore_init_from(pipe, cfg.init_from)
    dense_test_acc = pipe.evaluate(state, "test")["accuracy"]
    log(f"Initialised from {cfg.init_from}: dense test accuracy {100 * dense_test_acc:.2f}%")

  writer = SummaryWriter(os.path.join(wd, "tb")) if jax.process_index() == 0 else None
  spe = pipe.steps_per_epoch
  global_epoch_base = sum(e for _, e in pipe.phases[:start_phase_idx])
  ckpt_step = global_epoch_base + start_epoch

  for pi in range(start_phase_idx, len(pipe.phases)):
    phase, n_epochs = pipe.phases[pi]
    tx, steps = pipe.steps(phase)
    first_epoch = start_epoch if pi == start_phase_idx else 0
    if state is None:
      state = pipe.fresh_state(phase)
    elif first_epoch == 0 and not (pi == start_phase_idx and latest is not None
                                   and meta.get("phase") == phase):
      if phase != "dense":
        state = step_lib.replicate(step_lib.start_phase(state, phase, tx, pipe.info, pipe.rc),
                                   pipe.mesh)
    if n_epochs == 0 and phase != "dense":
      continue
    aux = pipe.aux_batches() if phase == "arsp" else None
    base = sum(e for _, e in pipe.phases[:pi])
    for epoch in range(first_epoch, n_epochs):
      t0 = time.time()
      global_epoch = base + epoch
      bar = tqdm(total=spe, desc=f"{phase} {epoch + 1}/{n_epochs}", disable=not pipe.progress,
                 leave=False, dynamic_ncols=True, mininterval=1.0)
      sums = {"loss": 0.0, "accuracy": 0.0, "n": 0}
      last_round = history["rounds"][-1] if history["rounds"] else None
      for i, b in enumerate(pipe.dataset.train_batches(global_epoch, cfg.batch_size, cfg.seed)):
        batch = step_lib.shard_batch(b, pipe.mesh)
        if phase == "arsp":
          state, m = steps["arsp"](state, batch, aux)
        else:
          state, m = steps["train"](state, batch)
        phase_step = epoch * spe + i + 1
        tb_step = global_epoch * spe + i + 1
        # The round ran at the start of this step (input step = phase_step - 1).
        is_round = (phase == "arsp" and phase_step > 1
                    and (phase_step - 1) % cfg.arsp.prune_every == 0)
        if is_round or (i + 1) % cfg.log_every == 0 or i + 1 == spe:
          m = jax.device_get(m)
          if not bool(m["finite"]):
            last = ck.latest_step()
            raise TrainingError(
                f"Non-finite loss or gradient at {phase} step {phase_step} (epoch {epoch + 1}). "
                f"Nothing was saved from this step; the last good checkpoint is "
                f"{'#' + str(last) if last is not None else 'none'} in {ck.directory}. "
                f"Lower the learning rate or check the input data, then rerun.")
          sums["loss"] += float(m["loss"])
          sums["accuracy"] += float(m["accuracy"])
          sums["n"] += 1
          if writer is not None:
            writer.add_scalar(f"{phase}/loss", float(m["loss"]), tb_step)
            writer.add_scalar(f"{phase}/accuracy", float(m["accuracy"]), tb_step)
            writer.add_scalar(f"{phase}/learning_rate",
                              float(phase_schedule(cfg, phase, spe)(phase_step - 1)), tb_step)
          if is_round:
            last_round = _record_round(history, m, pipe, phase_step, writer, tb_step)
          post = {"loss": f"{float(m['loss']):.3f}", "acc": f"{float(m['accuracy']):.3f}"}
          if last_round is not None and phase == "arsp":
            post["sparsity"] = f"{1 - last_round['density_after']:.3f}"
            post["reward"] = f"{last_round['reward']:.3f}"
          bar.set_postfix(post, refresh=False)
        bar.update(1)
      bar.close()
      seconds = time.time() - t0
      train_seconds += seconds
      val = pipe.evaluate(state, "val")
      density = float(jax.device_get(step_lib.overall_density(state.masks, pipe.info)))
      rec = {"phase": phase, "epoch": epoch + 1, "train_loss": sums["loss"] / max(sums["n"], 1),
             "train_accuracy": sums["accuracy"] / max(sums["n"], 1),
             "val_accuracy": val["accuracy"], "sparsity": 1.0 - density, "seconds": seconds}
      history["epochs"].append(rec)
      if writer is not None:
        writer.add_scalar(f"{phase}/val_accuracy", val["accuracy"], (global_epoch + 1) * spe)
        writer.add_scalar("sparsity", 1.0 - density, (global_epoch + 1) * spe)
        writer.flush()
      log(f"[{phase} {epoch + 1}/{n_epochs}] loss {rec['train_loss']:.4f} "
          f"train acc {100 * rec['train_accuracy']:.2f}% val acc {100 * val['accuracy']:.2f}% "
          f"sparsity {1 - density:.4f} ({seconds:.1f} s)")
      if phase == "dense" and epoch + 1 == n_epochs:
        dense_test_acc = pipe.evaluate(state, "test")["accuracy"]
        log(f"Dense test accuracy: {100 * dense_test_acc:.2f}%")
      ckpt_step = global_epoch + 1
      ck.save(ckpt_step, state, {"phase": phase, "phase_epoch": epoch + 1, "history": history,
                                 "dense_test_accuracy": dense_test_acc,
                                 "train_seconds": train_seconds})
    start_epoch = 0

  if writer is not None:
    writer.close()
  results = finish(pipe, state, history, dense_test_acc, train_seconds)
  report.write_json_atomic(os.path.join(wd, "results.json"), results)
  ck.close()
  return results


def _record_round(history, m, pipe: Pipeline, phase_step: int, writer, tb_step: int) -> dict:
  ratios = [float(x) for x in np.asarray(m["keep_ratios"])]
  dens = [float(x) for x in np.asarray(m["layer_density"])]
  rec = {"round": len(history["rounds"]) + 1, "step": phase_step,
         "reward": float(m["round_reward"]), "accuracy": float(m["round_accuracy"]),
         "density_before": float(m["round_density"]), "density_after": float(m["new_density"]),
         "keep_ratios": ratios, "layer_density": dens, "ppo_updates": int(m["ppo_updated"]),
         "policy_loss": float(m["ppo_policy_loss"]), "value_loss": float(m["ppo_value_loss"]),
         "entropy": float(m["ppo_entropy"]), "approx_kl": float(m["ppo_approx_kl"])}
  history["rounds"].append(rec)
  if writer is not None:
    writer.add_scalar("arsp/reward", rec["reward"], tb_step)
    writer.add_scalar("arsp/round_accuracy", rec["accuracy"], tb_step)
    writer.add_scalar("arsp/sparsity", 1 - rec["density_after"], tb_step)
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl"):
      writer.add_scalar(f"agent/{k}", rec[k], tb_step)
    for name, r, d in zip(pipe.info.paths, ratios, dens):
      layer = name.rsplit("/", 1)[0]
      writer.add_scalar(f"keep_ratio/{layer}", r, tb_step)
      writer.add_scalar(f"layer_sparsity/{layer}", 1 - d, tb_step)
  return rec


def finish(pipe: Pipeline, state, history, dense_test_acc, train_seconds) -> dict:
  cfg = pipe.cfg
  test = pipe.evaluate(state, "test")
  val = pipe.evaluate(state, "val")
  host = jax.device_get({"params": state.params, "masks": state.masks,
                         "batch_stats": state.batch_stats})
  summary = report.model_summary(host["params"], host["masks"], host["batch_stats"])
  layer_sparsity = {l["name"].rsplit("/", 1)[0]: l["sparsity"] for l in summary["layers"]
                    if l["binary"]}
  sparsity = summary["sparsity"]
  v = val["accuracy"] if not math.isnan(val["accuracy"]) else test["accuracy"]
  hs = cfg.hyperscore
  results = {
      "dataset": cfg.dataset, "model": cfg.model, "method": cfg.method, "seed": cfg.seed,
      "epochs": cfg.epochs, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "val_accuracy": val["accuracy"], "params": summary["prunable_connections"],
      "kept_connections": summary["kept_connections"], "sparsity": sparsity,
      "layer_sparsity": layer_sparsity, "train_seconds": train_seconds,
      "devices": pipe.num_devices, "processes": jax.process_count(),
      "dense_test_accuracy": dense_test_acc if cfg.method != "dense" else test["accuracy"],
      "hyperscore": report.hyperscore(v, sparsity, hs.beta0, hs.gamma, hs.kappa),
      "size": summary, "history": history, "config": cfg.to_dict(),
  }
  method = methods_lib.get(cfg.method)
  if method is not None:
    rounds = history["rounds"]
    rc = pipe.rc
    results.update({
        "score": rc.score, "granularity": cfg.arsp.granularity, "controller": rc.controller,
        "schedule": method.schedule, "temperature": rc.temperature,
        "target_sparsity": 0.0 if method.controller == "none" else cfg.arsp.target_sparsity,
        "keep_ratios": {"layers": [p.rsplit("/", 1)[0] for p in pipe.info.paths],
                        "per_round": [r["keep_ratios"] for r in rounds]},
        "agent": {"rounds": len(rounds),
                  "ppo_updates": rounds[-1]["ppo_updates"] if rounds else 0,
                  "final_mean_reward": float(np.mean([r["reward"] for r in rounds[-4:]]))
                  if rounds else None,
                  "final_keep_ratios": rounds[-1]["keep_ratios"] if rounds else None},
    })
  return results
