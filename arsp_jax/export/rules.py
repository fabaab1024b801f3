"""Integer sign rules of the fused kernels (numpy, at load time): a binary layer's float
epilogue + batchnorm + sign, tabulated over every reachable integer, as thresholds.
"""

from __future__ import annotations

import numpy as np

from arsp_jax.export import words


def sign_thresholds(kbits, scale, bias, mult, add, nmax: int):
  """``(s, t)`` int64 per stored output with ``(s * n >= t) == (((n * scale + bias) * mult
  + add) >= 0)`` (float64, as the float epilogue computes it) for every integer ``n`` in
  ``[-nmax, nmax]``; None if some output's rule is not a threshold (it always is: each
  rounding step is monotone)."""
  n = np.arange(-nmax, nmax + 1, dtype=np.int64)
  s = np.zeros(len(kbits), np.int64)
  t = np.zeros(len(kbits), np.int64)
  step = max(1, (1 << 22) // len(n))
  for lo in range(0, len(kbits), step):
    sl = slice(lo, lo + step)
    v = ((n[None] * scale[sl, None] + bias[sl, None]) * mult[sl, None] + add[sl, None]) >= 0
    first, last = v[:, 0], v[:, -1]
    up = last & ~first
    down = first & ~last
    t_up = n[np.argmax(v, axis=1)]
    t_down = -n[len(n) - 1 - np.argmax(v[:, ::-1], axis=1)]
    s[sl] = np.where(up, 1, np.where(down, -1, 0))
    t[sl] = np.where(up, t_up, np.where(down, t_down, np.where(first, 0, 1)))
    if not np.array_equal(s[sl, None] * n[None] >= t[sl, None], v):
      return None
  return s, t


def sign_bounds(s, t) -> tuple[np.ndarray, np.ndarray]:
  """The rule ``s * n >= t`` (``s`` in -1, 0, 1) as ``nlo <= n <= nhi``, int32 (the ``n`` of
  a conv stay far inside +-2**30)."""
  big = 1 << 30
  t = np.clip(t, -big, big)
  nlo = np.where(s > 0, t, np.where(s < 0, -big, np.where(t <= 0, -big, big)))
  nhi = np.where(s > 0, big, np.where(s < 0, -t, np.where(t <= 0, big, -big)))
  return nlo.astype(np.int32), nhi.astype(np.int32)


def popcount_bounds(kbits, s, t) -> tuple[np.ndarray, np.ndarray]:
  """The rule ``s * (kbits - 2 pc) >= t`` as ``lo <= pc <= hi`` on the popcount ``pc``."""
  big = np.iinfo(np.int64).max // 4
  lo = np.where(s < 0, -((-(t + kbits)) // 2), -1)  # ceil((t + k) / 2)
  hi = np.where(s > 0, (kbits - t) // 2, big)  # floor((k - t) / 2)
  never = (s == 0) & (t > 0)
  return np.where(never, big, lo), np.where(never, -1, hi)


def flag_bytes(width: int) -> np.ndarray:
  return np.zeros(-(-width // words.WORD_BITS) * words.WORD_BITS, np.uint8)


def float_out_arrays(real: dict) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of a float Dense ``out`` layer in float64, the bias including the constant
  of inputs dropped by channel pruning (``input_const``)."""
  kern = np.asarray(real["kernel"], np.float64)
  bout = np.zeros(kern.shape[1])
  for extra in ("bias", "input_const"):
    if extra in real:
      bout = bout + np.asarray(real[extra], np.float64)
  return kern, bout
