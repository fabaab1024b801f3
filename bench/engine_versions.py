"""The compiled engine before and after a change, interleaved in one process on one machine.

The old engine is the ``arsp_jax/export`` package (with ``arsp_jax/errors.py``) at
``--old`` (a git commit), extracted to a temporary directory and renamed ``arsp_old`` so that
both import side by side.  Each model (BNN mode, random weights as ``bench/inference.py``
builds them, standardised random 8-bit images) is exported once with this checkout's
exporter (the old engine ignores the graph it adds) and loaded by both engines; their logits
must be equal bit for bit.  Every variant is called in turn, ``--per-round`` calls per round,
for ``--rounds`` rounds; the figure is the median of the single calls, and the ratio new / old
is what to compare (the machine is shared: absolute figures drift with its load).

  python bench/engine_versions.py --old 4962558 --out bench/results/engine_versions.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import inference  # noqa: E402  (bench/inference.py: models, masks, CPU info, timing)


def extract_old(commit: str, into: str) -> None:
  """``arsp_jax/export`` at ``commit`` as the package ``arsp_old`` under ``into``."""
  files = ["arsp_jax/__init__.py", "arsp_jax/errors.py", "arsp_jax/export"]
  tar = subprocess.run(
    ["git", "archive", commit, *files], cwd=ROOT, capture_output=True, check=True
  ).stdout
  subprocess.run(["tar", "-x", "-C", into], input=tar, check=True)
  os.rename(os.path.join(into, "arsp_jax"), os.path.join(into, "arsp_old"))
  for path in Path(into, "arsp_old").rglob("*.py"):
    path.write_text(path.read_text().replace("arsp_jax", "arsp_old"))


def build(name: str, kind: str, tmp: str) -> str:
  from arsp_jax import models
  from arsp_jax.export import compress

  spec = inference.MODELS[name]
  model = models.get_model(name, 10, **spec["kwargs"], **inference.BNN)
  arch = compress.describe_model(model, spec["shape"])
  v = inference.variables_for(model, spec["shape"], kind)
  path = os.path.join(tmp, f"{name}_{kind}.arsp")
  extra = {"standardisation": inference.STANDARDISATION}
  compress.export(path, v["params"], v["masks"], v["batch_stats"], arch, extra)
  return path


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--old", default="4962558")
  ap.add_argument("--models", nargs="+", default=["mlp", "cnn_small"])
  ap.add_argument("--kinds", nargs="+", default=["dense", "word_0.95"])
  ap.add_argument("--batches", type=int, nargs="+", default=[1])
  ap.add_argument("--rounds", type=int, default=300)
  ap.add_argument("--per-round", type=int, default=5)
  ap.add_argument("--out", default="bench/results/engine_versions.json")
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    extract_old(args.old, tmp)
    sys.path.insert(0, tmp)
    from arsp_old.export import engine as old_engine

    from arsp_jax.export import engine as new_engine

    fns, checks, load = {}, {}, os.getloadavg()
    rng = np.random.default_rng(1)
    for name in args.models:
      for kind in args.kinds:
        path = build(name, kind, tmp)
        old = old_engine.load(path, "compiled", dtype=np.float32)
        new = new_engine.load(path, "compiled", dtype=np.float32)
        for b in args.batches:
          raw = rng.integers(0, 256, (b, *inference.MODELS[name]["shape"])).astype(np.uint8)
          x = new.preprocess(raw)
          key = f"{name}/{kind}/batch{b}"
          checks[key] = bool(np.array_equal(old.logits(x), new.logits(x)))
          fns[f"{key}/old"] = lambda m=old, x=x, b=b: m.logits(x, batch_size=b)
          fns[f"{key}/new"] = lambda m=new, x=x, b=b: m.logits(x, batch_size=b)
    res = inference.interleaved(fns, args.rounds, args.per_round)
  rows = {}
  for key in checks:
    o, n = res[f"{key}/old"]["median_ms"], res[f"{key}/new"]["median_ms"]
    rows[key] = {"old_ms": o, "new_ms": n, "new_over_old": n / o, "equal_logits": checks[key]}
    print(f"{key:32s} old {o:.4f} ms  new {n:.4f} ms  new/old {n / o:.3f}  equal {checks[key]}")
  report = {
    "benchmark": "engine_versions",
    "old_commit": args.old,
    "new_commit": subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip(),
    "settings": vars(args),
    "cpu": inference.cpu_info(),
    "numba_threads": os.environ["NUMBA_NUM_THREADS"],
    "load_average_before": load,
    "load_average_after": os.getloadavg(),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "statistic": "median ms of single logits calls, old and new interleaved in rounds",
    "rows": rows,
    "timings": res,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
