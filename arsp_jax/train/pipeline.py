"""What a run is built from: the data, the model, the initial variables and the compiled steps.

``Pipeline(cfg, workdir)`` loads the dataset, builds the model and its initial variables, plans
the phases (``phases.py``) and compiles each phase's steps once (shared by the Pipelines of one
process through a small cache). It evaluates a state on a split and summarises its size.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from arsp_jax import configs as config_lib
from arsp_jax import data as data_lib
from arsp_jax import models
from arsp_jax.export import compress
from arsp_jax.export import summary as report
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.train import phases
from arsp_jax.train import step as step_lib
from arsp_jax.train.state import LayerInfo, create_state

_STEP_CACHE: dict = {}  # compiled steps shared by the Pipelines of one process (FIFO)
_STEP_CACHE_SIZE = 24


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
    self.cfg = cfg  # validated by the caller's entry point (loop.run, eval's saved_config)
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
      input_workers=input_workers(cfg.input_workers),
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
    init = lambda r: models.init_variables(self.model, r, self.dataset.image_shape)  # noqa: E731
    check_model_fits(cfg, init, self.dataset.image_shape)
    # Kept on the host: every state built from them gets fresh device buffers, which the
    # compiled steps may donate.
    self.variables = jax.device_get(jax.jit(init)(r_init))
    self.info = LayerInfo.from_masks(self.variables["masks"])
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
        steps = step_lib.Steps(self.model, tx, self.info, self.rc, self.mesh, skip_nonfinite=skip)
        if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
          _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        _STEP_CACHE[key] = (tx, steps)
      self._compiled[phase] = _STEP_CACHE[key]
    return self._compiled[phase]

  def fresh_state(self, phase: str):
    """The state at the start of ``phase`` from the initial variables (also a restore template)."""
    tx, _ = self.steps(phase)
    dense_tx, _ = self.steps("dense") if phase != "dense" else (tx, None)
    state = create_state(self.variables, dense_tx, self.r_state)
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
      out = jax.device_get(steps.eval(state, step_lib.shard_batch(b, self.mesh)))
      for k in totals:
        totals[k] += float(out[k])
    c = max(totals["count"], 1.0)
    return {
      "accuracy": totals["correct"] / c,
      "loss": totals["loss"] / c,
      "count": int(totals["count"]),
    }

  def size_summary(self, state) -> dict:
    """Connection counts and sizes of ``state``'s model (``export.summary.model_summary``)."""
    host = jax.device_get(
      {"params": state.params, "masks": state.masks, "batch_stats": state.batch_stats}
    )
    arch = compress.describe_model(self.model, self.dataset.image_shape)
    return report.model_summary(
      host["params"],
      host["masks"],
      host["batch_stats"],
      {l["name"] for l in arch["layers"] if l.get("scale")},
      arch,  # the export's size exactly (inputs after pruned channels dropped)
    )


#: The most parameters a model may have (4 GiB of float32 per copy; the optimizer keeps more).
MAX_PARAMS = 1 << 30


def check_model_fits(cfg, init: Callable, image_shape: tuple) -> None:
  """``ConfigError`` when the model cannot be built for ``image_shape`` (a spatial size that
  pooling makes zero, e.g. vgg_small on 1x1 images) or is too large — found from the shapes
  alone (``jax.eval_shape``), before any memory is allocated."""
  what = f"--model={cfg.model} (model_kwargs {dict(cfg.model_kwargs)}) on images of shape "
  what += f"{tuple(image_shape)} (height, width, channels)"
  try:
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  except (ZeroDivisionError, ValueError, TypeError, OverflowError, IndexError) as e:
    raise config_lib.ConfigError(
      f"{what} cannot be built ({type(e).__name__}: {str(e)[:200]}): the images are too "
      f"small for the model's pooling/strides or an option does not fit. Use larger images, "
      f"another --model, or other model_kwargs."
    ) from None
  leaves = jax.tree_util.tree_leaves_with_path(shapes)
  empty = [jax.tree_util.keystr(p) for p, leaf in leaves if 0 in leaf.shape]
  if empty:
    raise config_lib.ConfigError(
      f"{what} leaves layer {empty[0]} with no units: the images are too small for the "
      f"model's pooling/strides. Use larger images or another --model."
    )
  n = sum(math.prod(leaf.shape) for p, leaf in leaves if "params" in jax.tree_util.keystr(p))
  if n > MAX_PARAMS:
    raise config_lib.ConfigError(
      f"{what} has {n:,} parameters (at most {MAX_PARAMS:,}): lower the widths in model_kwargs."
    )


def check_target_reachable(cfg, masks) -> str | None:
  """With channel granularity every pruned layer keeps at least ``channel_multiple`` output
  channels (all of them when it has fewer). ``ConfigError`` when that floor leaves nothing to
  prune; a one-line warning (returned) when it stops short of ``--target_sparsity``."""
  a, method = cfg.arsp, methods_lib.get(cfg.method)
  if method is None or not method.prunes or a.granularity != "channel" or a.target_sparsity <= 0:
    return None
  leaves = [np.shape(m) for m in jax.tree.leaves(masks)]
  total = sum(math.prod(s) for s in leaves)
  floor = sum(math.prod(s) * min(a.channel_multiple, s[-1]) / s[-1] for s in leaves)
  if not total or floor / total <= 1.0 - a.target_sparsity + 1e-9:
    return None
  text = (
    f"--channel_multiple={a.channel_multiple} keeps at least {a.channel_multiple} output "
    f"channels of every prunable layer, so the sparsity cannot exceed {1 - floor / total:.3f}"
  )
  if floor >= total:
    raise config_lib.ConfigError(
      f"{text}: nothing would be pruned towards --target_sparsity={a.target_sparsity}. Lower "
      f"--channel_multiple (each layer has {min(s[-1] for s in leaves)} or more channels)."
    )
  return f"warning: {text}; --target_sparsity={a.target_sparsity} will not be reached."


def input_workers(configured: int) -> int:
  """grain worker processes for ``input_workers`` (-1: one per core, at most 8)."""
  return min(8, os.cpu_count() or 1) if configured < 0 else int(configured)
