"""Device memory of the compiled steps at ImageNet sizes, from XLA's own accounting.

For each model, lowers and compiles the dense training step and the ARSP step (the training
step with the pruning round, the agent's population scoring included) for one device with the
ImageNet preset's shapes — a ``--batch_size`` batch of 224x224x3 images, the calibration and
reward sets of ``arsp.calib_size`` / ``arsp.reward_size`` images resident on the device — and
reports ``jax.jit(...).lower(...).compile().memory_analysis()``: arguments, outputs, temporaries
and the peak (arguments + outputs + temporaries − aliased donations). Nothing is run; abstract
inputs are enough, so the compile is the only cost (minutes per model on a 2-core CPU). The
figures are XLA:CPU's buffer assignment: a GPU's differs in detail (fusion, workspace) but not
in what grows with P, the chunk and the reward set.

  python bench/memory.py                     # resnet18, resnet50: the old and the new defaults
  python bench/memory.py --models=resnet18 --settings=16x16x0,16x4x256 --reward_size=4096

A setting ``PxCxB`` is the population ``P``, ``arsp.eval_chunk`` ``C`` (candidates vmapped at
once) and ``arsp.eval_batch`` ``B`` (images per forward pass in the round; 0: the whole
calibration or reward set in one pass).

Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arsp_jax import configs  # noqa: E402
from arsp_jax.train import loop  # noqa: E402
from bench.benchutil import cpu_model  # noqa: E402

GIB = 2.0**30


def _abstract(x, lead=None):
  shape = tuple(x.shape) if lead is None else (lead,) + tuple(x.shape[1:])
  return jax.ShapeDtypeStruct(shape, x.dtype, sharding=x.sharding)


def _analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  arg, out = m.argument_size_in_bytes, m.output_size_in_bytes
  tmp, alias = m.temp_size_in_bytes, m.alias_size_in_bytes
  return {
    "argument_gib": arg / GIB,
    "output_gib": out / GIB,
    "temp_gib": tmp / GIB,
    "alias_gib": alias / GIB,
    "peak_gib": (arg + out + tmp - alias) / GIB,
  }


def measure(model, population, chunk, eval_batch, args, dense: bool) -> dict:
  over = {
    "dataset": "synthetic",
    "model": model,
    "num_devices": 1,
    "batch_size": 8,
    "dataset_kwargs.image_shape": (224, 224, 3),
    "dataset_kwargs.num_classes": 1000,
    "dataset_kwargs.num_train": 64,
    "dataset_kwargs.num_test": 16,
    "val_size": 16,
    "arsp.calib_size": 16,
    "arsp.reward_size": 16,
    "arsp.prune_every": 1,
    "arsp.population": population,
    "arsp.eval_chunk": chunk,
    "arsp.eval_batch": eval_batch,
  }
  base = configs.get_config("imagenet")
  cfg = configs.apply_overrides(configs.get_config("synthetic"), over)
  for k in ("granularity", "channel_multiple", "recovery_steps", "recovery_batch"):
    cfg.arsp[k] = base.arsp[k]
  pipe = loop.Pipeline(cfg, "/tmp/arsp_bench_memory", progress=False)
  small = pipe.aux_batches()
  sizes = {"calib": args.calib_size, "calib_label": args.calib_size}
  sizes.update(val_image=args.reward_size, val_label=args.reward_size)
  aux = {k: _abstract(v, sizes[k]) for k, v in small.items()}
  batch = next(iter(pipe.dataset.train_batches(0, cfg.batch_size, 0)))
  sharding = small["calib"].sharding
  batch = {
    k: jax.ShapeDtypeStruct((args.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype,
                            sharding=sharding)
    for k, v in batch.items()
  }  # fmt: skip
  row = {"model": model, "population": population, "eval_chunk": chunk, "eval_batch": eval_batch}
  if dense:
    _, steps = pipe.steps("dense")
    dstate = jax.tree.map(_abstract, pipe.fresh_state("dense"))
    t = time.perf_counter()
    row["dense"] = _analysis(steps.train().lower(dstate, batch).compile())
    row["dense"]["compile_s"] = time.perf_counter() - t
  _, arsp = pipe.steps("arsp")
  astate = jax.tree.map(_abstract, pipe.fresh_state("arsp"))
  t = time.perf_counter()
  row["arsp"] = _analysis(arsp.arsp(with_round=True).lower(astate, batch, aux).compile())
  row["arsp"]["compile_s"] = time.perf_counter() - t
  return row


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--models", default="resnet18,resnet50")
  ap.add_argument(
    "--settings",
    default="16x16x0,16x4x256,16x1x256",
    help="PxCxB,...: population x eval_chunk x eval_batch",
  )
  ap.add_argument("--batch_size", type=int, default=256, help="global training batch")
  base = configs.get_config("imagenet").arsp
  ap.add_argument("--calib_size", type=int, default=base.calib_size)
  ap.add_argument("--reward_size", type=int, default=base.reward_size)
  ap.add_argument("--out", default="bench/results/memory.json")
  args = ap.parse_args()
  rows = []
  for model in args.models.split(","):
    for i, s in enumerate(args.settings.split(",")):
      p, c, b = (int(x) for x in s.split("x"))
      rows.append(measure(model, p, c, b, args, dense=i == 0))
      print(json.dumps(rows[-1]), flush=True)
  out = {
    "benchmark": "memory",
    "settings": {**vars(args), "cpu": cpu_model(), "backend": jax.default_backend()},
    "jax": jax.__version__,
    "rows": rows,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
