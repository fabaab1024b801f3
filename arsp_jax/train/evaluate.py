"""Restore a run directory's latest checkpoint and evaluate it (``eval.py``)."""

from __future__ import annotations

import os
import stat

import jax
import numpy as np

from arsp_jax import configs as config_lib
from arsp_jax import fileio
from arsp_jax.export import summary as report
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train.pipeline import Pipeline


def load_run(workdir: str, data_dir: str | None = None):
  """(pipeline, state, meta) for the latest checkpoint in ``workdir``."""
  if not workdir or not workdir.strip():
    raise config_lib.ConfigError("--workdir is required: the directory train.py wrote.")
  wd = os.path.abspath(workdir)
  cfg_path = os.path.join(wd, "config.json")
  if not os.path.exists(wd):
    raise config_lib.ConfigError(f"--workdir={wd} does not exist.")
  if not os.path.isdir(wd):
    raise config_lib.ConfigError(
      f"--workdir={wd} is a file, not a run directory: pass the directory train.py wrote "
      f"(it holds config.json and checkpoints/)."
    )
  if not os.path.exists(cfg_path):
    raise config_lib.ConfigError(f"{wd} has no config.json: it is not a train.py run directory.")
  ck_dir = os.path.join(wd, "checkpoints")
  if not os.path.isdir(ck_dir):
    raise ckpt_lib.CheckpointError(
      f"{wd} has no checkpoints/: the run never finished an epoch. "
      f"Run train.py with --workdir={wd} first."
    )
  ck = ckpt_lib.Checkpointer(ck_dir)
  if ck.latest_step() is None:
    raise ckpt_lib.CheckpointError(
      f"{ck_dir} holds no complete checkpoint. Run train.py with --workdir={wd} first."
    )
  cfg = saved_config(cfg_path, data_dir)
  pipe = Pipeline(cfg, wd, progress=False)
  meta = ck.restore_meta()
  state = ck.restore_state(pipe.fresh_state(meta["phase"]))
  ck.close()
  return pipe, state, meta


def saved_config(cfg_path: str, data_dir: str | None = None):
  """The validated configuration of a run from its ``config.json`` (``data_dir`` replacing
  the saved one); ``ConfigError`` naming the file when it cannot be read, is not JSON or
  holds no valid configuration (the run directory is then damaged, or not train.py's)."""
  from arsp_jax.train import resume  # noqa: PLC0415

  saved = resume.read_config_json(cfg_path, action="evaluate it", fix="pass another --workdir")
  try:
    cfg = config_lib.from_saved(saved)
    if data_dir:
      cfg.data_dir = data_dir
    config_lib.validate(cfg)
  except (config_lib.ConfigError, TypeError, ValueError, AttributeError) as e:
    raise config_lib.ConfigError(
      f"{cfg_path} does not hold a valid train.py configuration ({e}). The run directory is "
      f"damaged or was not written by train.py."
    ) from None
  return cfg


#: Files of a run directory that --export never replaces (nor any file already in it).
RUN_FILES = ("config.json", "results.json", "eval.json")


def check_export_path(path: str, overwrite: bool = False, workdir: str | None = None) -> str:
  """Absolute ``path`` if an export file may be written there, else ``ConfigError``.

  Refused: a directory; an existing path unless ``overwrite``, and then only a regular file
  (never a FIFO, a device such as /dev/null or a socket); a file of the run directory
  ``workdir`` (config.json, results.json, eval.json, anything under checkpoints/ or tb/, any
  file already in it); a directory that does not exist or cannot be written.
  """
  if not path or not path.strip():
    raise config_lib.ConfigError("--export= is empty: give a file name, e.g. --export=model.arsp.")
  p = os.path.abspath(path)
  d = os.path.dirname(p)
  if os.path.isdir(p):
    raise config_lib.ConfigError(
      f"--export={path} is a directory; give a file name, e.g. {os.path.join(path, 'model.arsp')}."
    )
  if workdir and _in_run_dir(p, workdir):
    raise config_lib.ConfigError(
      f"--export={path} is a file of the run directory {os.path.abspath(workdir)}, which "
      f"--export never replaces. Give a new file name, e.g. --export=model.arsp."
    )
  if os.path.lexists(p):
    if os.path.exists(p) and not stat.S_ISREG(os.stat(p).st_mode):
      raise config_lib.ConfigError(
        f"--export={path} exists and is not a regular file (a FIFO, a device or a socket); "
        f"--export writes regular files only. Give another path."
      )
    if not overwrite:
      raise config_lib.ConfigError(
        f"--export={path} exists. Give a new path, or add --overwrite to replace that file."
      )
  if not os.path.isdir(d):
    raise config_lib.ConfigError(f"--export={path}: directory {d} does not exist.")
  if not os.access(d, os.W_OK):
    raise config_lib.ConfigError(f"--export={path}: directory {d} is not writable.")
  return p


def _in_run_dir(path: str, workdir: str) -> bool:
  """Whether ``path`` (absolute) is one of the run directory's own files."""
  wd, real = os.path.realpath(workdir), os.path.realpath(path)
  if os.path.commonpath([wd, real]) != wd or real == wd:
    return False
  rel = os.path.relpath(real, wd)
  return os.path.lexists(path) or rel in RUN_FILES or rel.split(os.sep)[0] in ("checkpoints", "tb")


def flax_logits_fn(model):
  """Jitted ``images -> logits`` of the Flax model in inference mode."""
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def export_run(
  pipe,
  state,
  path: str,
  split: str = "test",
  check: bool = True,
  flax_accuracy: float | None = None,
  overwrite: bool = False,
) -> dict:
  """Exports the run's model to ``path`` and (``check``) runs the packed engine on ``split``.

  Every binary layer is written in the fastest exact format its mask allows (dense, channel,
  word, then sparse; see ``arsp_jax.export.compress``).  Returns the export record: file and
  payload sizes, the latency of the fastest engine (compiled when numba is installed) at
  batch 1 and 64, and with ``check`` the engine's accuracy, the Flax model's accuracy on the
  same images and how many predictions differ.
  """
  from arsp_jax.export import compress, engine

  path = check_export_path(path, overwrite, pipe.workdir)
  host = jax.device_get(
    {"params": state.params, "masks": state.masks, "batch_stats": state.batch_stats}
  )
  arch = compress.describe_model(pipe.model, pipe.dataset.image_shape)
  extra = {
    "dataset": pipe.cfg.dataset,
    "method": pipe.cfg.method,
    "num_classes": pipe.dataset.num_classes,
    "standardisation": {
      "mean": [float(v) for v in np.ravel(pipe.dataset.mean)],
      "std": [float(v) for v in np.ravel(pipe.dataset.std)],
    },
    "flax_accuracy": flax_accuracy,
    "split": split,
  }
  try:
    header = compress.export(path, host["params"], host["masks"], host["batch_stats"], arch, extra)
  except compress.ExportError as e:
    raise config_lib.ConfigError(str(e)) from None
  rec = {
    "path": path,
    "file_bytes": header["file_bytes"],
    "header_bytes": header["header_bytes"],
    "payload_bits": header["payload_bits"],
    "sizes": header["sizes"],
    "encodings": {n: l["encoding"] for n, l in header["layers"].items() if l["kind"] == "binary"},
  }
  model = engine.load(path)
  rec["engine"] = type(model).__name__
  rec["latency"] = [engine.measure_latency(model, b, repeats=r) for b, r in ((1, 20), (64, 5))]
  if check:
    rec.update(check_engine(pipe, model, host, split))
  return rec


def check_engine(pipe, model, host: dict, split: str) -> dict:
  """The exported model's accuracy on ``split`` next to the Flax model's, and how many
  predictions (and how much the logits) differ."""
  apply = flax_logits_fn(pipe.model)
  variables = {k: host[k] for k in ("params", "batch_stats", "masks")}
  n = correct_engine = correct_flax = differ = 0
  max_err = 0.0
  for b in pipe.dataset.eval_batches(split, pipe.eval_batch_size):
    w = np.asarray(b["weight"]) > 0
    x, y = np.asarray(b["image"])[w], np.asarray(b["label"])[w]
    ref = np.asarray(apply(variables, x))
    got = model.logits(x)
    pe, pf = got.argmax(-1), ref.argmax(-1)
    n += len(y)
    correct_engine += int((pe == y).sum())
    correct_flax += int((pf == y).sum())
    differ += int((pe != pf).sum())
    max_err = max(max_err, float(np.max(np.abs(got - ref))) if len(y) else 0.0)
  return {
    "examples": n,
    "engine_accuracy": correct_engine / max(n, 1),
    "flax_accuracy": correct_flax / max(n, 1),
    "predictions_differ": differ,
    "max_abs_logit_diff": max_err,
  }


def evaluate_workdir(
  workdir: str,
  data_dir: str | None = None,
  split: str = "test",
  export: str | None = None,
  export_check: bool = True,
  overwrite: bool = False,
) -> dict:
  if export:
    check_export_path(export, overwrite, workdir)  # fail before the (slow) evaluation
  pipe, state, meta = load_run(workdir, data_dir)
  res = pipe.evaluate(state, split)
  summary = pipe.size_summary(state)
  out = {
    "workdir": pipe.workdir,
    "split": split,
    "accuracy": res["accuracy"],
    "loss": res["loss"],
    "examples": res["count"],
    "phase": meta["phase"],
    "phase_epoch": meta["phase_epoch"],
    "dataset": pipe.cfg.dataset,
    "model": pipe.cfg.model,
    "method": pipe.cfg.method,
    "size": summary,
  }
  if export:
    out["export"] = export_run(
      pipe, state, export, split, export_check, res["accuracy"], overwrite=overwrite
    )
  fileio.write_json_atomic(os.path.join(pipe.workdir, "eval.json"), out)
  return out


def format_eval(out: dict) -> str:
  head = (
    f"{out['method']} {out['model']} on {out['dataset']} ({out['split']}, "
    f"{out['examples']} images; checkpoint: {out['phase']} epoch {out['phase_epoch']})\n"
    f"accuracy {100 * out['accuracy']:.2f}%  loss {out['loss']:.4f}\n"
  )
  text = head + report.format_summary(out["size"])
  ex = out.get("export")
  if ex:
    text += (
      f"\n\nexported {ex['path']}: {ex['file_bytes'] / 1024:,.1f} KiB on disk "
      f"({ex['payload_bits'] / 8 / 1024:,.1f} KiB arrays + {ex['header_bytes']:,} bytes "
      f"JSON header and npz framing)"
    )
    lat = ", ".join(f"batch {r['batch']} {r['median_ms']:.3f} ms" for r in ex.get("latency", ()))
    if lat:
      text += f"\nlatency ({ex['engine']}, median): {lat}"
    if "engine_accuracy" in ex:
      same = "equal" if ex["predictions_differ"] == 0 else "DIFFERENT"
      text += (
        f"\npacked engine accuracy {100 * ex['engine_accuracy']:.2f}% vs Flax "
        f"{100 * ex['flax_accuracy']:.2f}% on {ex['examples']} images: predictions "
        f"{same} ({ex['predictions_differ']} differ), max |logit difference| "
        f"{ex['max_abs_logit_diff']:.2e}"
      )
  return text
