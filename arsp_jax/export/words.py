"""64-bit words per kernel tap: the layout of the ``word`` format and of the compiled engine.

A binary kernel ``[..., I, O]`` (Dense ``[I, O]``: one tap; Conv ``[kh, kw, I, O]``: ``kh*kw``
taps) is cut, per output channel, into words of :data:`WORD_BITS` consecutive input channels
of one tap: ``Iw = ceil(I / 64)`` words per tap, word ``t * Iw + j`` holding input channels
``64 j .. 64 j + 63`` of tap ``t`` (bit ``b`` = channel ``64 j + b``, LSB first; the bits past
``I`` are 0).  When ``I`` is a multiple of 64 these are exactly the 64-bit words of the
flattened reduction axis.  A *word mask* keeps whole words, the same number in every output
channel (3PXNet's fixed fan-in); :func:`arsp_jax.pruning.reservoir.reservoir_mask` with
``granularity="word"`` draws one.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def tap_view(matrix: np.ndarray, in_channels: int) -> np.ndarray:
  """``[O, R]`` (R flattened in (tap, channel) order) -> ``[O, T, I]``."""
  o, r = matrix.shape
  return matrix.reshape(o, r // in_channels, in_channels)


def pack_taps(bits: np.ndarray) -> np.ndarray:
  """bool ``[..., I]`` -> uint64 ``[..., ceil(I / 64)]`` (LSB first, zero padding)."""
  bits = np.asarray(bits, bool)
  i = bits.shape[-1]
  iw = -(-i // WORD_BITS)
  if iw * WORD_BITS != i:
    pad = np.zeros((*bits.shape[:-1], iw * WORD_BITS - i), bool)
    bits = np.concatenate([bits, pad], axis=-1)
  packed = np.packbits(bits, axis=-1, bitorder="little")
  return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_taps(words: np.ndarray, in_channels: int) -> np.ndarray:
  """Inverse of :func:`pack_taps`."""
  w = np.ascontiguousarray(np.asarray(words, np.uint64)).astype("<u8", copy=False)
  return np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")[..., :in_channels] > 0


def word_counts(mask: np.ndarray, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept connections ``[O, T*Iw]``, connections ``[T*Iw]``) per word of an ``[O, R]`` mask."""
  m = tap_view(np.asarray(mask, bool), in_channels)
  o, t, i = m.shape
  iw = -(-i // WORD_BITS)
  padded = np.zeros((o, t, iw * WORD_BITS), bool)
  padded[..., :i] = m
  kept = padded.reshape(o, t * iw, WORD_BITS).sum(axis=-1)
  valid = np.zeros(iw * WORD_BITS, bool)
  valid[:i] = True
  size = np.tile(valid.reshape(iw, WORD_BITS).sum(axis=-1), t)
  return kept, size


def word_structure(mask: np.ndarray, in_channels: int) -> np.ndarray | None:
  """Kept word indices ``[O, F]`` (ascending) if ``mask`` keeps whole words, the same number
  ``F >= 1`` in every output channel; else None."""
  kept, size = word_counts(mask, in_channels)
  full = kept == size[None]
  if not np.all(full | (kept == 0)):
    return None
  per_row = full.sum(axis=1)
  if per_row.size == 0 or per_row.min() != per_row.max() or per_row[0] == 0:
    return None
  return np.nonzero(full)[1].reshape(kept.shape[0], int(per_row[0]))
