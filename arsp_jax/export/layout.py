"""Load-time weight layouts of the compiled kernels (numpy): a binary-input layer's 64-bit words
transposed to ``[F, O]`` with per-output gathers, and a real-input layer's byte tables.
"""

from __future__ import annotations

import numpy as np

GATHER_MAX_FRACTION = 0.4  # gather only below this: a gathered word costs ~2.5x a dense one


def gathered_words(
  sign_words: np.ndarray,
  mask_words: np.ndarray,
  valid: np.ndarray,
  max_fraction: float = GATHER_MAX_FRACTION,
) -> dict:
  """Per output channel the words with a kept connection, padded to the largest count.

  ``sign_words``/``mask_words`` ``[O, N]`` uint64, ``valid [N]`` the bits of each word that
  hold a connection.  Returns ``{"w", "m", "idx"}`` transposed to ``[F, O]`` (``idx``: the
  source word of each entry; padding entries have mask 0) and ``flags = (has_mask,
  has_idx)``: ``has_mask`` is False when every entry keeps all its connections (the AND is
  skipped: padding bits of inputs and weights are 0).  When a layer keeps most of its words
  every word is kept in place (no gather).
  """
  o, n = sign_words.shape
  nz = mask_words != 0
  f = int(nz.sum(axis=1).max()) if o else 0
  if f > max_fraction * n or f == 0:
    idx = np.broadcast_to(np.arange(n), (o, n))
    w, m, has_idx = sign_words, mask_words, False
  else:
    idx = np.argsort(~nz, axis=1, kind="stable")[:, :f]  # kept words first, in order
    w = np.take_along_axis(sign_words, idx, axis=1)
    m = np.take_along_axis(mask_words, idx, axis=1)
    m = np.where(np.take_along_axis(nz, idx, axis=1), m, np.uint64(0))
    has_idx = True
  t = lambda a, dt=None: np.ascontiguousarray(np.asarray(a).T, dtype=dt)  # noqa: E731
  return {
    "w": t(w),
    "m": t(m),
    "idx": t(idx, np.int64),
    "flags": (bool(np.any(m != valid[idx])), has_idx),
  }


def lut_layout(eff: np.ndarray) -> dict:
  """Byte layout of a real-input layer's +-1/0 weights for :func:`kernels.lut_dense_range`."""
  pos = np.packbits(eff > 0, axis=1, bitorder="little")  # [O_s, G]
  neg = np.packbits(eff < 0, axis=1, bitorder="little")
  t = lambda a, dt=None: np.ascontiguousarray(np.asarray(a).T, dtype=dt)  # noqa: E731
  if not np.any(eff == 0):
    gidx = np.broadcast_to(np.arange(pos.shape[1]), pos.shape)
    return {"pos": t(pos), "neg": t(neg), "gidx": t(gidx, np.int64), "has_neg": False}
  used = (pos | neg) != 0
  f = max(1, int(used.sum(axis=1).max()))
  order = np.argsort(~used, axis=1, kind="stable")[:, :f]
  keep = np.take_along_axis(used, order, axis=1)
  return {
    "pos": t(np.where(keep, np.take_along_axis(pos, order, axis=1), 0), np.uint8),
    "neg": t(np.where(keep, np.take_along_axis(neg, order, axis=1), 0), np.uint8),
    "gidx": t(order, np.int64),
    "has_neg": True,
  }
