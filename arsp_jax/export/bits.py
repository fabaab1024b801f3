"""Bit packing (32 bits per uint32 word, LSB first) and the mask codes of the export
(raw bitmap or Golomb-Rice-coded run lengths), with the order-0 entropy they are measured
against.  numpy only."""

from __future__ import annotations

import math

import numpy as np

from arsp_jax.errors import ExportError

# --------------------------------------------------------------------------- bit packing


def pack_bits(bits: np.ndarray) -> np.ndarray:
  """Packs a boolean array along its last axis: 32 bits per uint32 word, LSB first.

  ``[..., R]`` -> uint32 ``[..., ceil(R / 32)]``; padding bits are 0.
  """
  bits = np.asarray(bits, bool)
  r = bits.shape[-1]
  words = max(1, -(-r // 32))
  pad = words * 32 - r
  if pad:
    bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], pad), bool)], axis=-1)
  packed = np.packbits(bits, axis=-1, bitorder="little")  # [..., words * 4] uint8
  return np.ascontiguousarray(packed).view("<u4").astype(np.uint32, copy=False)


def unpack_bits(words: np.ndarray, r: int) -> np.ndarray:
  """Inverse of :func:`pack_bits`: uint32 ``[..., W]`` -> bool ``[..., r]``."""
  words = np.ascontiguousarray(np.asarray(words, np.uint32)).astype("<u4", copy=False)
  bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
  return bits[..., :r].astype(bool)


def pack_stream(bits: np.ndarray) -> np.ndarray:
  """A flat bit stream packed into uint32 words (LSB first); no words for an empty stream."""
  bits = np.asarray(bits, bool).reshape(-1)
  return pack_bits(bits) if bits.size else np.zeros(0, np.uint32)


# --------------------------------------------------------------------------- mask coding


def binary_entropy(p: float) -> float:
  if p <= 0.0 or p >= 1.0:
    return 0.0
  return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def entropy_bound_bits(mask: np.ndarray) -> float:
  """``n * H(d)``: the order-0 entropy of the mask (bits), d the empirical density."""
  m = np.asarray(mask).reshape(-1)
  return float(m.size * binary_entropy(float(m.mean()) if m.size else 0.0))


def gaps_before(positions: np.ndarray) -> np.ndarray:
  """Run lengths before each position: ``p0, p1 - p0 - 1, ...``."""
  positions = np.asarray(positions, np.int64)
  if positions.size == 0:
    return positions
  return np.diff(positions, prepend=-1) - 1


def rice_cost(gaps: np.ndarray, k: int) -> int:
  """Bits of the Golomb-Rice code with parameter 2**k of ``gaps``."""
  return int(np.sum(gaps >> k)) + (k + 1) * int(gaps.size)


def best_rice_k(gaps: np.ndarray) -> tuple[int, int]:
  """(k, bits) minimising the Rice code length of ``gaps``."""
  if gaps.size == 0:
    return 0, 0
  hi = max(1, int(gaps.max()).bit_length())
  costs = [(rice_cost(gaps, k), k) for k in range(0, hi + 1)]
  bits, k = min(costs)
  return k, bits


def rice_encode(gaps: np.ndarray, k: int) -> np.ndarray:
  """Golomb-Rice bit stream (bool) of non-negative ``gaps``: ``q`` ones, a zero, ``k`` bits."""
  gaps = np.asarray(gaps, np.int64)
  q = gaps >> k
  lengths = q + 1 + k
  total = int(lengths.sum())
  bits = np.zeros(total, bool)
  if total == 0:
    return bits
  starts = np.cumsum(lengths) - lengths
  nq = int(q.sum())
  if nq:
    group_start = np.repeat(np.cumsum(q) - q, q)
    bits[np.repeat(starts, q) + (np.arange(nq) - group_start)] = True
  r = gaps & ((1 << k) - 1)
  for j in range(k):
    bits[starts + q + 1 + j] = ((r >> (k - 1 - j)) & 1).astype(bool)
  return bits


def rice_decode(bits: np.ndarray, count: int, k: int) -> np.ndarray:
  """Decodes ``count`` gaps from a Rice bit stream (bool array)."""
  bits = np.asarray(bits, bool)
  n = bits.size
  out = np.empty(count, np.int64)
  if count == 0:
    return out
  # next_zero[p]: index of the first 0 at or after p (n if none).
  zeros = np.flatnonzero(~bits)
  idx = np.searchsorted(zeros, np.arange(n + 1))
  next_zero = np.append(zeros, n)[idx].tolist()
  # val[p]: the k-bit big-endian integer starting at p.
  padded = np.concatenate([bits, np.zeros(k + 1, bool)]).astype(np.int64)
  val = np.zeros(n + 1, np.int64)
  for j in range(k):
    val += padded[j : j + n + 1] << (k - 1 - j)
  val = val.tolist()
  pos = 0
  for i in range(count):
    z = next_zero[pos]
    out[i] = ((z - pos) << k) | (val[z + 1] if z + 1 <= n else 0)
    pos = z + 1 + k
  return out


def encode_mask(mask: np.ndarray) -> dict:
  """Encodes a 0/1 mask (any shape, flattened) with the smallest of three codes.

  Returns ``{"method", "n", "count", "k", "nbits", "words"}``: ``method`` is ``bitmap``
  (raw bits), ``rice1`` (Rice-coded run lengths before each kept connection) or ``rice0``
  (run lengths before each pruned one); ``words`` the uint32 payload.
  """
  m = np.asarray(mask).reshape(-1) > 0
  n = int(m.size)
  options = [("bitmap", 0, n, None)]
  for method, sym in (("rice1", m), ("rice0", ~m)):
    gaps = gaps_before(np.flatnonzero(sym))
    k, bits = best_rice_k(gaps)
    options.append((method, k, bits, gaps))
  method, k, nbits, gaps = min(options, key=lambda o: (o[2], o[0] != "bitmap"))
  if method == "bitmap":
    stream, count = m, int(m.sum())
  else:
    stream, count = rice_encode(gaps, k), int(gaps.size)
  assert stream.size == nbits
  return {
    "method": method,
    "n": n,
    "count": count,
    "k": int(k),
    "nbits": int(nbits),
    "words": pack_stream(stream),
  }


def decode_mask(
  method: str, n: int, count: int, k: int, nbits: int, words: np.ndarray
) -> np.ndarray:
  """Inverse of :func:`encode_mask`: a flat bool mask of ``n`` entries."""
  bits = unpack_bits(words, nbits) if nbits else np.zeros(0, bool)
  if method == "bitmap":
    return bits[:n].copy()
  if method not in ("rice1", "rice0"):
    raise ExportError(f"unknown mask code {method!r}")
  gaps = rice_decode(bits, count, k)
  positions = np.cumsum(gaps + 1) - 1
  m = np.zeros(n, bool)
  m[positions] = True
  return m if method == "rice1" else ~m
