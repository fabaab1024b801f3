"""numpy helpers of the packed engines: 64-bit words, XOR-popcount, windows, padding, pooling."""

from __future__ import annotations

import numpy as np

TEMP_BYTES = 32 << 20  # bound on the XOR-popcount temporary per chunk


def to_u64(words: np.ndarray) -> np.ndarray:
  """uint32 ``[..., W]`` -> uint64 ``[..., ceil(W / 2)]`` (zero word appended when W is odd)."""
  words = np.asarray(words, np.uint32)
  if words.shape[-1] % 2:
    words = np.concatenate([words, np.zeros((*words.shape[:-1], 1), np.uint32)], axis=-1)
  return np.ascontiguousarray(words).view(np.uint64)


def xor_popcount(x: np.ndarray, w: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
  """``popcount((x XOR w) AND m)`` summed over words: x ``[N, W]``, w/m ``[O, W]`` -> ``[N, O]``.

  One pass per 64-bit word over contiguous ``[N, O]`` arrays (3-4x faster in numpy than a
  broadcast ``[N, O, W]`` reduction over the short word axis), rows chunked to bound memory.
  """
  n, o = x.shape[0], w.shape[0]
  words = w.shape[1]
  if n * o * words <= (1 << 15):  # small (batch-1 dense): one broadcast
    t = x[:, None, :] ^ w[None]
    if m is not None:
      t &= m[None]
    return np.bitwise_count(t).sum(axis=-1, dtype=np.int64)
  acc_t = np.uint16 if 64 * words < (1 << 16) else np.int64
  out = np.empty((n, o), np.int64)
  xt = np.ascontiguousarray(x.T)  # [W, N]
  wt = np.ascontiguousarray(w.T)  # [W, O]
  mt = None if m is None else np.ascontiguousarray(m.T)
  step = max(1, TEMP_BYTES // max(1, 8 * o))
  for s in range(0, n, step):
    e = min(n, s + step)
    tmp = np.empty((e - s, o), np.uint64)
    acc = np.zeros((e - s, o), acc_t)
    for j in range(words):
      np.bitwise_xor(xt[j, s:e, None], wt[j][None], out=tmp)
      if mt is not None:
        tmp &= mt[j][None]
      acc += np.bitwise_count(tmp)
    out[s:e] = acc
  return out


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
  """``[B, H, W, C]`` (already padded) -> ``[B, Ho, Wo, kh, kw, C]`` (a view when possible)."""
  v = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # [B,Ho',Wo',C,kh,kw]
  v = v[:, ::sh, ::sw]
  return v.transpose(0, 1, 2, 4, 5, 3)


def pad(x: np.ndarray, padding, value) -> np.ndarray:
  (pt, pb), (pl, pr) = padding
  if not (pt or pb or pl or pr):
    return x
  return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def same_padding(hw, ks, strides) -> list:
  """Explicit ``[[top, bottom], [left, right]]`` of XLA's ``SAME`` padding."""
  out = []
  for n, k, s in zip(hw, ks, strides):
    o = -(-n // s)
    total = max((o - 1) * s + k - n, 0)
    out.append([total // 2, total - total // 2])
  return out


def max_pool2(x: np.ndarray) -> np.ndarray:
  b, h, w, c = x.shape
  ho, wo = h // 2, w // 2
  return x[:, : 2 * ho, : 2 * wo].reshape(b, ho, 2, wo, 2, c).max(axis=(2, 4))


def max_pool3s2(x: np.ndarray) -> np.ndarray:
  xp = pad(x, ((1, 1), (1, 1)), -np.inf)
  return windows(xp, 3, 3, 2, 2).max(axis=(3, 4))


def avg_pool_same(x: np.ndarray, s: int) -> np.ndarray:
  """``nn.avg_pool(x, (s, s), strides=(s, s), padding='SAME', count_include_pad=False)``."""
  pads = same_padding(x.shape[1:3], (s, s), (s, s))
  xp = pad(x, pads, 0.0)
  ones = pad(np.ones((1, *x.shape[1:3], 1), x.dtype), pads, 0.0)
  total = windows(xp, s, s, s, s).sum(axis=(3, 4))
  count = windows(ones, s, s, s, s).sum(axis=(3, 4))
  return total / count
