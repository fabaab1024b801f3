"""Restore a run directory's latest checkpoint and evaluate it (``eval.py``)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from arsp_jax import checkpoint as ckpt_lib
from arsp_jax import config as config_lib
from arsp_jax import loop, report


def load_run(workdir: str, data_dir: str | None = None):
  """(pipeline, state, meta) for the latest checkpoint in ``workdir``."""
  if not workdir:
    raise config_lib.ConfigError("--workdir is required: the directory train.py wrote.")
  wd = os.path.abspath(workdir)
  cfg_path = os.path.join(wd, "config.json")
  if not os.path.isdir(wd):
    raise config_lib.ConfigError(f"--workdir={wd} does not exist.")
  if not os.path.exists(cfg_path):
    raise config_lib.ConfigError(f"{wd} has no config.json: it is not a train.py run directory.")
  with open(cfg_path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  if data_dir:
    cfg.data_dir = data_dir
  ck_dir = os.path.join(wd, "checkpoints")
  if not os.path.isdir(ck_dir):
    raise ckpt_lib.CheckpointError(f"{wd} has no checkpoints/: the run never finished an epoch. "
                                   f"Run train.py with --workdir={wd} first.")
  ck = ckpt_lib.Checkpointer(ck_dir)
  if ck.latest_step() is None:
    raise ckpt_lib.CheckpointError(f"{ck_dir} holds no complete checkpoint. Run train.py with "
                                   f"--workdir={wd} first.")
  pipe = loop.Pipeline(cfg, wd, progress=False)
  meta = ck.restore_meta()
  state = ck.restore_state(pipe.fresh_state(meta["phase"]))
  ck.close()
  return pipe, state, meta


def evaluate_workdir(workdir: str, data_dir: str | None = None, split: str = "test") -> dict:
  pipe, state, meta = load_run(workdir, data_dir)
  res = pipe.evaluate(state, split)
  host = jax.device_get({"params": state.params, "masks": state.masks,
                         "batch_stats": state.batch_stats})
  summary = report.model_summary(host["params"], host["masks"], host["batch_stats"])
  out = {"workdir": pipe.workdir, "split": split, "accuracy": res["accuracy"],
         "loss": res["loss"], "examples": res["count"], "phase": meta["phase"],
         "phase_epoch": meta["phase_epoch"], "dataset": pipe.cfg.dataset,
         "model": pipe.cfg.model, "method": pipe.cfg.method, "size": summary}
  report.write_json_atomic(os.path.join(pipe.workdir, "eval.json"), out)
  return out


def format_eval(out: dict) -> str:
  head = (f"{out['method']} {out['model']} on {out['dataset']} ({out['split']}, "
          f"{out['examples']} images; checkpoint: {out['phase']} epoch {out['phase_epoch']})\n"
          f"accuracy {100 * out['accuracy']:.2f}%  loss {out['loss']:.4f}\n")
  return head + report.format_summary(out["size"])
