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
from numba import njit, prange

from arsp_jax.export.simd import popcount64

# --------------------------------------------------------------------------- packing

PACK_MUL = np.uint64(0x0102040810204080)  # 8 bytes of 0/1 -> 8 bits in the top byte


@njit(cache=True)
def pack_flags(flags, out):
  """``flags`` uint8 0/1 ``[64 * W]`` -> ``out`` uint64 ``[W]`` (bit ``b`` of word ``j`` =
  ``flags[64 j + b]``), 8 flags per multiply."""
  v = flags.view(np.uint64)
  for j in range(out.shape[0]):
    acc = np.uint64(0)
    for q in range(8):
      acc |= ((v[8 * j + q] * PACK_MUL) >> np.uint64(56)) << np.uint64(8 * q)
    out[j] = acc


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


@njit(cache=True)
def bn_sign_pack_range(y, mult, add, out, lo, hi):
  """Bits ``y * mult + add >= 0`` of ``y [P, C]`` (batchnorm then sign) into ``out [P, Cw]``."""
  c_n = y.shape[1]
  for p in range(lo, hi):
    for j in range(out.shape[1]):
      acc = np.uint64(0)
      for b in range(min(64, c_n - 64 * j)):
        c = 64 * j + b
        if y[p, c] * mult[c] + add[c] >= 0:
          acc |= np.uint64(1) << np.uint64(b)
      out[p, j] = acc


@njit(cache=True)
def pool_bn_sign_pack_range(y, mult, add, out, lo, hi):
  """2x2 max pool, batchnorm, sign, packed: ``y [B, H, W, C]`` -> ``out [B, H/2, W/2, Cw]``
  for the flattened output rows ``lo:hi`` (batch x output row)."""
  c_n = y.shape[3]
  ho, wo = out.shape[1], out.shape[2]
  for row in range(lo, hi):
    b, i = row // ho, row % ho
    for j in range(wo):
      for w in range(out.shape[3]):
        acc = np.uint64(0)
        for bit in range(min(64, c_n - 64 * w)):
          c = 64 * w + bit
          m = max(
            max(y[b, 2 * i, 2 * j, c], y[b, 2 * i, 2 * j + 1, c]),
            max(y[b, 2 * i + 1, 2 * j, c], y[b, 2 * i + 1, 2 * j + 1, c]),
          )
          if m * mult[c] + add[c] >= 0:
            acc |= np.uint64(1) << np.uint64(bit)
        out[b, i, j, w] = acc


# --------------------------------------------------------------------------- dense layers


@njit(cache=True)
def popcount_rows(xv, w_t, m_t, idx_t, acc, has_mask, has_idx):
  """``acc[o] = sum_f popcount((x[f or idx[f, o]] XOR w[f, o]) AND m[f, o])`` for every
  output channel ``o``, vectorised over ``o``: transposed ``[F, O_s]`` weights, loops over
  whole contiguous rows from 0 (the form LLVM vectorises; measured 1.7x faster than one
  row per channel on a 9-word conv, 1.1x on a 16-word dense layer)."""
  n = acc.shape[0]
  for o in range(n):
    acc[o] = 0
  for f in range(w_t.shape[0]):
    wrow = w_t[f]
    if has_idx:
      irow = idx_t[f]
      if has_mask:
        mrow = m_t[f]
        for o in range(n):
          acc[o] += popcount64((xv[irow[o]] ^ wrow[o]) & mrow[o])
      else:
        for o in range(n):
          acc[o] += popcount64(xv[irow[o]] ^ wrow[o])
    else:
      xf = xv[f]
      if has_mask:
        mrow = m_t[f]
        for o in range(n):
          acc[o] += popcount64((xf ^ wrow[o]) & mrow[o])
      else:
        for o in range(n):
          acc[o] += popcount64(xf ^ wrow[o])


@njit(cache=True)
def bdense_range(xw, w_t, m_t, idx_t, kbits, scale, cols, bias, out, flags, lo, hi):
  """Rows ``lo:hi`` of a binary-input dense layer.

  ``xw [N, W]`` packed inputs; ``w_t``/``m_t`` ``[F, O_s]`` signs/mask words of the stored
  channels (``F = W``, or with ``has_idx`` the input word ``idx_t[f, o]`` of each entry);
  ``kbits [O_s]`` kept connections; ``flags = (has_mask, has_idx, scatter)``; writes
  ``out[n, cols[o]] = (K - 2 pc) * scale[o] + bias[cols[o]]``.
  """
  acc = np.empty(w_t.shape[1], np.int64)
  for n in range(lo, hi):
    popcount_rows(xw[n], w_t, m_t, idx_t, acc, flags[0], flags[1])
    orow = out[n]
    if flags[2]:  # scatter to the full channel axis (pruned channels keep their bias)
      for o in range(acc.shape[0]):
        orow[cols[o]] = (kbits[o] - 2 * acc[o]) * scale[o] + bias[cols[o]]
    else:
      for o in range(acc.shape[0]):
        orow[o] = (kbits[o] - 2 * acc[o]) * scale[o] + bias[o]


@njit(cache=True, parallel=True)
def bdense_par(xw, w_t, m_t, idx_t, kbits, scale, cols, bias, out, flags, chunks):
  """:func:`bdense_range` with the batch split over threads."""
  n = xw.shape[0]
  step = (n + chunks - 1) // chunks
  for c in prange(chunks):
    lo, hi = c * step, min(n, (c + 1) * step)
    bdense_range(xw, w_t, m_t, idx_t, kbits, scale, cols, bias, out, flags, lo, hi)


@njit(cache=True)
def subset_sums(x, table):
  """``table[g, b]`` = sum of ``x[8 g + i]`` over the set bits ``i`` of byte ``b``."""
  r = x.shape[0]
  for g in range(table.shape[0]):
    table[g, 0] = 0.0
    for i in range(8):
      j = 8 * g + i
      v = x[j] if j < r else 0.0
      half = 1 << i
      for b in range(half):
        table[g, half + b] = table[g, b] + v


@njit(cache=True, fastmath=True)
def lut_rows(table, pos_t, neg_t, gidx_t, has_neg, acc, o_lo, o_hi):
  """``acc[o]`` (``o_lo:o_hi``) of a real-input layer from the subset-sum ``table``.

  ``pos_t``/``neg_t`` ``[G, O_s]``: bytes of the weights' +1 / -1 bits at input byte
  ``gidx_t[g, o]``; without ``has_neg`` entry ``g`` is input byte ``g`` and every input bit
  not in ``pos`` is -1 (dense): ``acc = 2 * sum(table[pos]) - sum(x)`` (``table[:, 255]``).
  Loops run byte-major so that each table row (2 KiB) stays in L1.
  """
  a = acc[o_lo:o_hi]
  a[:] = 0.0
  n = o_hi - o_lo
  for g in range(pos_t.shape[0]):
    prow = pos_t[g, o_lo:o_hi]
    if has_neg:
      nrow = neg_t[g, o_lo:o_hi]
      grow = gidx_t[g, o_lo:o_hi]
      for o in range(n):
        a[o] += table[grow[o], prow[o]] - table[grow[o], nrow[o]]
    else:
      row = table[g]
      for o in range(n):
        a[o] += row[prow[o]]
  if not has_neg:
    total = 0.0
    for g in range(table.shape[0]):
      total += table[g, 255]
    for o in range(n):
      a[o] = 2.0 * a[o] - total


@njit(cache=True)
def lut_dense_range(x, pos_t, neg_t, gidx_t, has_neg, scale, cols, bias, out, table, acc):
  """Real-input layer with +-1/0 weights by 8-bit subset-sum tables (one per sample)."""
  o_s = pos_t.shape[1]
  for n in range(x.shape[0]):
    subset_sums(x[n], table)
    lut_rows(table, pos_t, neg_t, gidx_t, has_neg, acc, 0, o_s)
    for o in range(o_s):
      c = cols[o]
      out[n, c] = acc[o] * scale[o] + bias[c]


@njit(cache=True, parallel=True)
def lut_dense_par(x, pos_t, neg_t, gidx_t, has_neg, scale, cols, bias, out, table, acc, chunks):
  """:func:`lut_dense_range` with the output channels split over threads."""
  o_s = pos_t.shape[1]
  step = (o_s + chunks - 1) // chunks
  for n in range(x.shape[0]):
    subset_sums(x[n], table)
    for c in prange(chunks):
      lo, hi = c * step, min(o_s, (c + 1) * step)
      lut_rows(table, pos_t, neg_t, gidx_t, has_neg, acc, lo, hi)
      for o in range(lo, hi):
        out[n, cols[o]] = acc[o] * scale[o] + bias[cols[o]]


# --------------------------------------------------------------------------- convolutions


@njit(cache=True)
def bconv_range(
  xbp, w_t, m_t, idx_t, kbits, corr, border, geom, scale, cols, bias, out, flags, lo, hi
):
  """Rows ``lo:hi`` (flattened batch x output row) of a binary-input convolution.

    ``xbp [B, Hp, Wp, Cw]``: inputs packed per pixel along channels, spatially padded with
    zero words (read as -1); the patch of an output pixel is its ``T * Cw`` words in (tap,
    word) order, and ``w_t``/``m_t``/``idx_t`` ``[F, O_s]`` are as in :func:`bdense_range`
    over that patch.  ``corr [Ho * Wo, O_s]`` adds back what the padding's -1 inputs took
  XX
  """
  kh, kw, sh, sw = geom[0], geom[1], geom[2], geom[3]
  cw = xbp.shape[3]
  ho, wo = out.shape[1], out.shape[2]
  o_s = w_t.shape[1]
  patch = np.empty(kh * kw * cw, np.uint64)
  acc = np.empty(o_s, np.int64)
  for row in range(lo, hi):
    b, oh = row // ho, row % ho
    for ow in range(wo):
      for ty in range(kh):
        for tx in range(kw):
          base = (ty * kw + tx) * cw
          for j in range(cw):
            patch[base + j] = xbp[b, oh * sh + ty, ow * sw + tx, j]
      popcount_rows(patch, w_t, m_t, idx_t, acc, flags[0], flags[1])
      p = oh * wo + ow
      if border[p]:
        for o in range(o_s):
          acc[o] = kbits[o] - 2 * acc[o] + corr[p, o]
      else:
        for o in range(o_s):
          acc[o] = kbits[o] - 2 * acc[o]
      orow = out[b, oh, ow]
      if flags[2]:  # scatter to the full channel axis (pruned channels keep their bias)
        for o in range(o_s):
          orow[cols[o]] = acc[o] * scale[o] + bias[cols[o]]
      else:
        for o in range(o_s):
          orow[o] = acc[o] * scale[o] + bias[o]


@njit(cache=True, parallel=True)
def bconv_par(
  xbp, w_t, m_t, idx_t, kbits, corr, border, geom, scale, cols, bias, out, flags, chunks
):
  rows = out.shape[0] * out.shape[1]
  step = (rows + chunks - 1) // chunks
  for c in prange(chunks):
    lo, hi = c * step, min(rows, (c + 1) * step)
    args = (xbp, w_t, m_t, idx_t, kbits, corr, border, geom, scale, cols, bias, out, flags)
    bconv_range(*args, lo, hi)


@njit(cache=True)
def rconv_range(xp, w, bias, out, geom, lo, hi):
  """Rows ``lo:hi`` of a real-input convolution: ``xp [B, Hp, Wp, C]`` zero-padded float64
  inputs, ``w [kh * kw * C, O]`` weights, ``out[b, i, j] = patch @ w + bias``, vectorised over
  the output channels."""
  kh, kw, sh, sw = geom[0], geom[1], geom[2], geom[3]
  c_n = xp.shape[3]
  ho, wo = out.shape[1], out.shape[2]
  o_n = w.shape[1]
  acc = np.empty(o_n, np.float64)
  for row in range(lo, hi):
    b, oh = row // ho, row % ho
    for ow in range(wo):
      for o in range(o_n):
        acc[o] = bias[o]
      for ty in range(kh):
        for tx in range(kw):
          for c in range(c_n):
            v = xp[b, oh * sh + ty, ow * sw + tx, c]
            wrow = w[(ty * kw + tx) * c_n + c]
            for o in range(o_n):
              acc[o] += v * wrow[o]
      orow = out[b, oh, ow]
      for o in range(o_n):
        orow[o] = acc[o]


CONV1_PIXELS = 256  # a chunk of output rows of about this many pixels: its patches stay in L1


@njit(cache=True)
def rconv_bn_sign_pack(xp, w, bias, mult, add, out, pt, y, geom):
  """The packed ``sign(bn(conv(x)))`` of a real-input convolution, image by image: the
  transposed patches ``pt [K, Ho * Wo]``, then ``y [O, Ho * Wo]`` output-channel-major so the
  inner loops run over the image's pixels (the direct form, :func:`kernels.rconv_range`, runs
  short inner loops over the output channels), then the bits ``y * mult + add >= 0`` packed
  along the channels into ``out [B, Ho, Wo, Ow]`` (uint64). ``y = bias + sum_k patch_k w_k``
  is summed in the direct form's order, so the values are the same (bit for bit).  A 3x3
  single-channel kernel (K = 9) runs by :func:`rconv9_bn_sign_pack`."""
  kh, kw, sh, sw = geom[0], geom[1], geom[2], geom[3]
  c_n = xp.shape[3]
  if kh * kw == 9 and c_n == 1:
    rconv9_bn_sign_pack(xp, w, bias, mult, add, out, geom)
    return
  ho, wo = out.shape[1], out.shape[2]
  o_n, n_k = w.shape[1], w.shape[0]
  n_px = ho * wo
  words = np.zeros(n_px, np.uint64)
  for b in range(xp.shape[0]):
    for ty in range(kh):
      for tx in range(kw):
        for c in range(c_n):
          prow = pt[(ty * kw + tx) * c_n + c]
          for oh in range(ho):
            for ow in range(wo):
              prow[oh * wo + ow] = xp[b, oh * sh + ty, ow * sw + tx, c]
    for o in range(o_n):
      yrow = y[o]
      for p in range(n_px):
        yrow[p] = bias[o]
      for k in range(n_k):
        wk, prow = w[k, o], pt[k]
        for p in range(n_px):
          yrow[p] += prow[p] * wk
    for j in range(out.shape[3]):
      for p in range(n_px):
        words[p] = 0
      for bit in range(min(64, o_n - 64 * j)):
        o = 64 * j + bit
        yrow, m, a, one = y[o], mult[o], add[o], np.uint64(1) << np.uint64(bit)
        for p in range(n_px):
          if yrow[p] * m + a >= 0:
            words[p] |= one
      for oh in range(ho):
        for ow in range(wo):
          out[b, oh, ow, j] = words[oh * wo + ow]


@njit(cache=True)
def rconv9_bn_sign_pack(xp, w, bias, mult, add, out, geom):
  """:func:`rconv_bn_sign_pack` of a 3x3 single-channel kernel: per chunk of output rows
  (about :data:`CONV1_PIXELS` pixels) the 9 rows of transposed patches, then per output
  channel its sums over the chunk in one vectorised pass (summed in the direct form's order:
  the same values), then their bits.  Arrays are indexed from 0 within a chunk (an index
  numba cannot prove non-negative costs a wrap-around check that stops LLVM vectorising;
  measured 29 vs 36 us for ``cnn_small``'s conv1 with the whole-image patches)."""
  kw, sh, sw = geom[1], geom[2], geom[3]
  ho, wo = out.shape[1], out.shape[2]
  o_n = w.shape[1]
  rows = max(1, CONV1_PIXELS // wo)
  q = np.empty((9, rows * wo))
  yb = np.empty(rows * wo)
  wd = np.empty((out.shape[3], rows * wo), np.uint64)
  for b in range(xp.shape[0]):
    for r0 in range(0, ho, rows):
      r1 = min(ho, r0 + rows)
      n = (r1 - r0) * wo
      for k in range(9):
        ty, tx = k // kw, k % kw
        for oh in range(r0, r1):
          base = (oh - r0) * wo
          for ow in range(wo):
            q[k, base + ow] = xp[b, oh * sh + ty, ow * sw + tx, 0]
      wd[:] = 0
      for o in range(o_n):
        b0, m, a = bias[o], mult[o], add[o]
        w0, w1, w2, w3, w4 = w[0, o], w[1, o], w[2, o], w[3, o], w[4, o]
        w5, w6, w7, w8 = w[5, o], w[6, o], w[7, o], w[8, o]
        for p in range(n):
          v = (((b0 + q[0, p] * w0) + q[1, p] * w1) + q[2, p] * w2) + q[3, p] * w3
          v = (((v + q[4, p] * w4) + q[5, p] * w5) + q[6, p] * w6) + q[7, p] * w7
          yb[p] = v + q[8, p] * w8
        wr, bit = wd[o // 64], np.uint64(o % 64)
        for p in range(n):
          wr[p] |= np.uint64(yb[p] * m + a >= 0) << bit
      for j in range(out.shape[3]):
        for oh in range(r0, r1):
          base = (oh - r0) * wo
          for ow in range(wo):
            out[b, oh, ow, j] = wd[j, base + ow]


@njit(cache=True)
def grouped_conv_range(xp, w, out, geom, groups, lo, hi):
  """Rows ``lo:hi`` (batch x output row) of a grouped (depthwise: ``groups`` = channels)
  convolution of the zero-padded input ``xp [B, Hp, Wp, C]`` with the effective weights
  ``w [kh * kw * C / groups, O]`` (float64; +-1 inputs and weights give exact integers) into
  ``out [B, Ho, Wo, O]``, vectorised over the output channels: per tap and input channel of a
  group, one multiply-add per output channel."""
  kh, kw, sh, sw = geom[0], geom[1], geom[2], geom[3]
  cg, o_n = xp.shape[3] // groups, w.shape[1]
  og = o_n // groups
  ho, wo = out.shape[1], out.shape[2]
  for row in range(lo, hi):
    b, i = row // ho, row % ho
    for j in range(wo):
      orow = out[b, i, j]
      orow[:] = 0.0
      for ty in range(kh):
        for tx in range(kw):
          xrow, t = xp[b, i * sh + ty, j * sw + tx], (ty * kw + tx) * cg
          for ci in range(cg):
            wrow = w[t + ci]
            for o in range(o_n):
              orow[o] += xrow[(o // og) * cg + ci] * wrow[o]
