"""Flat storage of a one-call kernel's arrays: six contiguous buffers (by dtype) and a table."""

from __future__ import annotations

import numpy as np
from numba import njit

# One model's arrays live in six contiguous buffers (by dtype) plus a table of (offset,
# rows, cols) per array: a call unboxes 7 arrays instead of ~45 (numba unboxes each array
# argument through the C API, ~0.1 us each: 4.5 us per call measured for the tuples).
# int32 holds the binary layers' popcount counts and kept-bit counts: their float epilogue
# vectorises ~3x better from int32 than from int64 (measured: 0.2 vs 0.65 us per 1024 outputs).
BUFFERS = (np.uint64, np.int64, np.float64, np.float32, np.uint8, np.int32)
ALIGN = 8  # elements: every array starts on an 8-byte boundary (``pack_flags`` views bytes)


class Flat:
  """Collects arrays into the per-dtype buffers; ``add`` returns the array's slot."""

  def __init__(self):
    self.items: list = []

  def add(self, a) -> int:
    a = np.ascontiguousarray(a)
    if a.dtype == np.bool_:
      a = a.astype(np.uint8)
    kind = [np.dtype(d) for d in BUFFERS].index(a.dtype)
    self.items.append((kind, a))
    return len(self.items) - 1

  def finish(self) -> tuple:
    sizes = [0] * len(BUFFERS)
    meta = np.zeros((len(self.items), 4), np.int64)
    for k, (kind, a) in enumerate(self.items):
      rows, cols = (a.shape[0], a.shape[1]) if a.ndim == 2 else (a.size, 1)
      meta[k] = (kind, sizes[kind], rows, cols)
      sizes[kind] += -(-max(a.size, 1) // ALIGN) * ALIGN
    bufs = [np.zeros(n, d) for n, d in zip(sizes, BUFFERS)]
    for k, (kind, a) in enumerate(self.items):
      bufs[kind][meta[k, 1] : meta[k, 1] + a.size] = a.reshape(-1)
    return (*bufs, meta)


@njit(cache=True, inline="always")
def span(buf, meta, k):
  o = meta[k, 1]
  return buf[o : o + meta[k, 2] * meta[k, 3]]


@njit(cache=True, inline="always")
def grid(buf, meta, k):
  o = meta[k, 1]
  return buf[o : o + meta[k, 2] * meta[k, 3]].reshape(meta[k, 2], meta[k, 3])
