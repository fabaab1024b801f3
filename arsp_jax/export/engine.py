"""One entry point for the packed engines: ``load(path)`` -> a model with ``predict``/``logits``.

``engine="compiled"`` (numba kernels, :mod:`arsp_jax.export.compiled`; numba comes with the
``engine`` extra: ``pip install 'arsp_jax[engine]'``), ``"numpy"`` (the reference,
:mod:`arsp_jax.export.packed`) or ``"auto"`` (compiled when numba imports, else numpy).
Neither imports jax or flax.
"""

from __future__ import annotations

import time

import numpy as np

from arsp_jax.errors import ExportError
from arsp_jax.export import NEEDS_NUMBA, compress
from arsp_jax.export.packed import PackedModel

ENGINES = ("auto", "compiled", "numpy")


def compiled_available() -> bool:
  try:
    import numba  # noqa: F401
  except ImportError:
    return False
  return True


def load(path: str, engine: str = "auto", dtype=np.float64):
  """The exported model at ``path`` ready to run with the chosen engine."""
  if engine not in ENGINES:
    raise ExportError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
  if engine == "compiled" and not compiled_available():
    raise ExportError(NEEDS_NUMBA)
  loaded = compress.load(path)
  if engine == "numpy" or (engine == "auto" and not compiled_available()):
    return PackedModel(loaded, dtype=dtype)
  from arsp_jax.export.compiled import CompiledModel  # imports numba (~0.3 s)

  return CompiledModel(loaded, dtype=dtype)


def measure_latency(
  model, batch: int, repeats: int = 20, warmup: int = 2, budget_s: float = 2.0
) -> dict:
  """Median and 90th percentile wall time (ms) of ``model.logits`` on a batch of zeros: up to
  ``repeats`` calls after ``warmup``, fewer (at least one) once ``budget_s`` seconds are spent."""
  x = np.zeros((batch, *model.input_shape), np.float32)
  start = time.perf_counter()
  for _ in range(warmup):
    model.logits(x, batch_size=batch)
  times = []
  while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
    t = time.perf_counter()
    model.logits(x, batch_size=batch)
    times.append(time.perf_counter() - t)
  ms = 1e3 * np.asarray(times)
  return {
    "batch": batch,
    "median_ms": float(np.median(ms)),
    "p90_ms": float(np.percentile(ms, 90)),
    "calls": len(times),
  }
