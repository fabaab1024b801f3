"""numba kernels of the compiled packed engine (:mod:`arsp_jax.export.compiled`).

XNOR-popcount on 64-bit words with the CPU's popcount (LLVM ``ctpop``: ``popcnt``, and
``vpopcntq`` where the CPU has AVX-512 VPOPCNTDQ and LLVM vectorises the word loop), compiled
for the host CPU.  Every kernel has a serial body over a range of rows and a ``prange`` driver
that splits the rows over numba's threads (``numba.set_num_threads``); the caller picks the
driver only when the work is large enough to pay for the thread start.  Kernels are compiled
on first use and cached on disk (``cache=True``: ``__pycache__`` beside this file, or numba's
user cache directory, or ``NUMBA_CACHE_DIR``).

Arithmetic: binary-input layers give exact integers ``K - 2 * popcount((x XOR w) AND m)``;
the epilogue ``y * scale + bias`` and the real-input layers run in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def popcount64(typingctx, x):
  """Hardware popcount of a uint64 as int64 (LLVM ``ctpop``)."""
  sig = types.int64(types.uint64)

  def codegen(context, builder, signature, args):
    return builder.ctpop(args[0])

  return sig, codegen


# --------------------------------------------------------------------------- packing


@njit(cache=True)
def pack_rows_range(x, out, lo, hi):
  """Bits ``x >= 0`` of rows ``lo:hi`` of ``x [N, R]`` into ``out [N, W]`` (LSB first)."""
  r = x.shape[1]
  for n in range(lo, hi):
    for j in range(out.shape[1]):
      acc = np.uint64(0)
      base = 64 * j
      top = min(64, r - base)
      for b in range(top):
        if x[n, base + b] >= 0:
          acc |= np.uint64(1) << np.uint64(b)
      out[n, j] = acc


@njit(cache=True, parallel=True)
def pack_rows_par(x, out, chunks):
  n = x.shape[0]
  step = (n + chunks - 1) // chunks
  for c in prange(chunks):
    pack_rows_range(x, out, c * step, min(n, (c + 1) * step))


# --------------------------------------------------------------------------- dense layers


@njit(cache=True)
def bdense_range(xw, w, m, idx, kbits, scale, cols, bias, out, has_mask, has_idx, lo, hi):
  """Output channels ``lo:hi`` of a binary-input dense layer.

  ``xw [N, W]`` packed inputs; ``w``/``m`` ``[O_s, F]`` signs/mask words of the stored
  channels (``F = W`` or, with ``has_idx``, the input word ``idx[o, f]`` of each stored
  word); ``kbits [O_s]`` kept connections; writes ``out[n, cols[o]] = (K - 2 pc) * scale[o]
  + bias[cols[o]]``.
  """
  f_words = w.shape[1]
  for n in range(xw.shape[0]):
    for o in range(lo, hi):
      s = 0
      if has_idx:
        if has_mask:
          for f in range(f_words):
            s += popcount64((xw[n, idx[o, f]] ^ w[o, f]) & m[o, f])
        else:
          for f in range(f_words):
            s += popcount64(xw[n, idx[o, f]] ^ w[o, f])
      elif has_mask:
        for f in range(f_words):
          s += popcount64((xw[n, f] ^ w[o, f]) & m[o, f])
      else:
        for f in range(f_words):
          s += popcount64(xw[n, f] ^ w[o, f])
      c = cols[o]
      out[n, c] = (kbits[o] - 2 * s) * scale[o] + bias[c]


@njit(cache=True, parallel=True)
def bdense_par(xw, w, m, idx, kbits, scale, cols, bias, out, has_mask, has_idx, chunks):
  o_s = w.shape[0]
  step = (o_s + chunks - 1) // chunks
  for c in prange(chunks):
    lo, hi = c * step, min(o_s, (c + 1) * step)
    bdense_range(xw, w, m, idx, kbits, scale, cols, bias, out, has_mask, has_idx, lo, hi)


@njit(cache=True)
def subset_sums(x, table):
  """``table[g, b]`` = sum of ``x[8 g + i]`` over the set bits ``i`` of byte ``b``."""
  r = x.shape[0]
  for g in range(table.shape[0]):
    table[g, 0] = 0.0
    for b in range(1, 256):
      low = b & -b
      i = 0
      while (1 << i) != low:
        i += 1
      j = 8 * g + i
      table[g, b] = table[g, b ^ low] + (x[j] if j < r else 0.0)


@njit(cache=True)
def lut_dense_range(x, pos, neg, gidx, has_neg, scale, cols, bias, out, table, lo, hi):
  """Real-input layer with +-1/0 weights by 8-bit subset-sum tables (one per sample).

  ``pos``/``neg`` ``[O_s, G]``: bytes of the weights' +1 / -1 bits at input byte
  ``gidx[o, g]``; without ``has_neg`` every input bit not in ``pos`` is -1 (dense), so
  ``y = 2 * sum(table[pos]) - sum(x)``.
  """
  g_n = pos.shape[1]
  for n in range(x.shape[0]):
    subset_sums(x[n], table)
    total = 0.0
    for g in range(table.shape[0]):
      total += table[g, 255]
    for o in range(lo, hi):
      s = 0.0
      if has_neg:
        for g in range(g_n):
          s += table[gidx[o, g], pos[o, g]] - table[gidx[o, g], neg[o, g]]
      else:
        for g in range(g_n):
          s += table[gidx[o, g], pos[o, g]]
        s = 2.0 * s - total
      c = cols[o]
      out[n, c] = s * scale[o] + bias[c]


# --------------------------------------------------------------------------- convolutions


@njit(cache=True)
def bconv_range(xb, w, m, dy, dx, wc, kword, geom, scale, cols, bias, out, has_mask, lo, hi):
  """Rows ``lo:hi`` (flattened batch x output row) of a binary-input convolution.

  ``xb [B, H, W, Cw]`` inputs packed per pixel along channels; per stored output channel
  ``o`` its words ``f``: signs ``w[o, f]`` (mask ``m``) for the input word ``wc[o, f]`` of
  the tap at offset ``(dy, dx)[o, f]``, with ``kword[o, f]`` kept connections.  Taps outside
  the image contribute 0 (zero padding).  ``geom = (stride_h, stride_w, pad_top, pad_left)``.
  """
  sh, sw, pt, pl = geom[0], geom[1], geom[2], geom[3]
  h, wd = xb.shape[1], xb.shape[2]
  ho, wo = out.shape[1], out.shape[2]
  f_words = w.shape[1]
  for row in range(lo, hi):
    b = row // ho
    oh = row % ho
    for ow in range(wo):
      y0 = oh * sh - pt
      x0 = ow * sw - pl
      for o in range(w.shape[0]):
        acc = 0
        for f in range(f_words):
          iy = y0 + dy[o, f]
          ix = x0 + dx[o, f]
          if iy < 0 or iy >= h or ix < 0 or ix >= wd:
            continue
          t = xb[b, iy, ix, wc[o, f]] ^ w[o, f]
          if has_mask:
            t &= m[o, f]
          acc += kword[o, f] - 2 * popcount64(t)
        c = cols[o]
        out[b, oh, ow, c] = acc * scale[o] + bias[c]


@njit(cache=True, parallel=True)
def bconv_par(xb, w, m, dy, dx, wc, kword, geom, scale, cols, bias, out, has_mask, chunks):
  rows = out.shape[0] * out.shape[1]
  step = (rows + chunks - 1) // chunks
  for c in prange(chunks):
    lo, hi = c * step, min(rows, (c + 1) * step)
    bconv_range(xb, w, m, dy, dx, wc, kword, geom, scale, cols, bias, out, has_mask, lo, hi)
