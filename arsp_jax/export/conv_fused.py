"""Fused binary convolutions of the compiled engine: conv + 2x2 max pool + batchnorm + sign +
pack in one kernel (:func:`bconv_sign_pool_range`), and a real-input conv + batchnorm + sign
+ pack (:func:`rconv_bn_sign_pack`), with the load-time preparation of the first
(:func:`sign_pool_rule`).  The kernel's options are the named fields of :class:`ConvOpts`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from arsp_jax.export.kernels import PACK_MUL, pack_flags
from arsp_jax.export.rules import flag_bytes, sign_bounds, sign_thresholds
from arsp_jax.export.simd import pool_bit32, popcount64, window_bits8, window_rows


@njit(cache=True, inline="always")
def dot9(w, m, o, x, has_mask):
  """``sum_f popcount((x[f] XOR w[f, o]) [AND m[f, o]])`` over 9 patch words (a tuple)."""
  if has_mask:
    return (
      popcount64((x[0] ^ w[0, o]) & m[0, o])
      + popcount64((x[1] ^ w[1, o]) & m[1, o])
      + popcount64((x[2] ^ w[2, o]) & m[2, o])
      + popcount64((x[3] ^ w[3, o]) & m[3, o])
      + popcount64((x[4] ^ w[4, o]) & m[4, o])
      + popcount64((x[5] ^ w[5, o]) & m[5, o])
      + popcount64((x[6] ^ w[6, o]) & m[6, o])
      + popcount64((x[7] ^ w[7, o]) & m[7, o])
      + popcount64((x[8] ^ w[8, o]) & m[8, o])
    )
  return (
    popcount64(x[0] ^ w[0, o])
    + popcount64(x[1] ^ w[1, o])
    + popcount64(x[2] ^ w[2, o])
    + popcount64(x[3] ^ w[3, o])
    + popcount64(x[4] ^ w[4, o])
    + popcount64(x[5] ^ w[5, o])
    + popcount64(x[6] ^ w[6, o])
    + popcount64(x[7] ^ w[7, o])
    + popcount64(x[8] ^ w[8, o])
  )


@njit(cache=True, inline="always")
def dot5(w, m, o, x, has_mask):
  """:func:`dot9` over 5 words (a 3x3 patch of up to 32 channels, two taps per word)."""
  if has_mask:
    return (
      popcount64((x[0] ^ w[0, o]) & m[0, o])
      + popcount64((x[1] ^ w[1, o]) & m[1, o])
      + popcount64((x[2] ^ w[2, o]) & m[2, o])
      + popcount64((x[3] ^ w[3, o]) & m[3, o])
      + popcount64((x[4] ^ w[4, o]) & m[4, o])
    )
  return (
    popcount64(x[0] ^ w[0, o])
    + popcount64(x[1] ^ w[1, o])
    + popcount64(x[2] ^ w[2, o])
    + popcount64(x[3] ^ w[3, o])
    + popcount64(x[4] ^ w[4, o])
  )


@njit(cache=True, inline="always")
def sel5(k, x):
  """Word ``k`` (uint64) of the 5 of ``x`` (selects, which LLVM vectorises over the outputs)."""
  a = x[0] if k == np.uint64(0) else x[1]
  b = x[2] if k == np.uint64(2) else x[3]
  c = a if k < np.uint64(2) else b
  return c if k < np.uint64(4) else x[4]


class ConvOpts(NamedTuple):
  """The options of :func:`bconv_sign_pool_range` (int64 fields, so that numba compiles one
  version for all their values):

  ``has_mask``  AND each word with its mask word (else every kept word is whole);
  ``has_idx``   each output reads its own gathered words (``goff``), else words in place;
  ``scatter``   pruned channels: the stored outputs go to ``cols`` among the constant bits;
  ``wo``        the conv's output width (before pooling);
  ``sh``/``sw`` the conv's strides;
  ``pairs``     a 3x3 patch of up to 32 channels: taps 2k and 2k + 1 share word k (5 words);
  ``one``       paired, one word per output, picked by :func:`sel5`;
  ``window``    AVX-512: 3x3, stride 1, one word per pixel and per output, picked by a
                permute from the window's 4 x 4 words (:func:`simd.window_bits8`).
  """

  has_mask: int
  has_idx: int
  scatter: int
  wo: int
  sh: int
  sw: int
  pairs: int
  one: int
  window: int


@njit(cache=True, inline="always")
def _patch9(xf, base, q):
  return (
    xf[base + q[0]],
    xf[base + q[1]],
    xf[base + q[2]],
    xf[base + q[3]],
    xf[base + q[4]],
    xf[base + q[5]],
    xf[base + q[6]],
    xf[base + q[7]],
    xf[base + q[8]],
  )


@njit(cache=True, inline="always")
def _paired(x):
  """9 words of up to 32 bits -> 5: taps (0, 1), (2, 3), (4, 5), (6, 7) share a word, 8 alone."""
  hi32 = np.uint64(32)
  return (
    x[0] | (x[1] << hi32),
    x[2] | (x[3] << hi32),
    x[4] | (x[5] << hi32),
    x[6] | (x[7] << hi32),
    x[8],
  )


@njit(cache=True, inline="always")
def _bits9(w_t, m_t, kbz, rows, um, nlo, nhi, xa, xb, xc, xd, has_mask, fl):
  """Pooled bits of every output from the window's four 9-word patches (:func:`dot9`)."""
  ra, rb, rc, rd = rows
  if has_mask:
    for o in range(w_t.shape[1]):
      na = kbz[ra, o] - 2 * dot9(w_t, m_t, o, xa, True)
      nb = kbz[rb, o] - 2 * dot9(w_t, m_t, o, xb, True)
      nc = kbz[rc, o] - 2 * dot9(w_t, m_t, o, xc, True)
      nd = kbz[rd, o] - 2 * dot9(w_t, m_t, o, xd, True)
      fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
  else:
    for o in range(w_t.shape[1]):
      na = kbz[ra, o] - 2 * dot9(w_t, m_t, o, xa, False)
      nb = kbz[rb, o] - 2 * dot9(w_t, m_t, o, xb, False)
      nc = kbz[rc, o] - 2 * dot9(w_t, m_t, o, xc, False)
      nd = kbz[rd, o] - 2 * dot9(w_t, m_t, o, xd, False)
      fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])


@njit(cache=True, inline="always")
def _bits5(w_t, m_t, goff, kbz, rows, um, nlo, nhi, xa, xb, xc, xd, has_mask, one, fl):
  """Pooled bits from the four paired 5-word patches (:func:`dot5`, or with ``one`` each
  output's one word picked by :func:`sel5`)."""
  ra, rb, rc, rd = rows
  if one:
    for o in range(w_t.shape[1]):
      k, wv, mv = goff[0, o], w_t[0, o], m_t[0, o]
      pa = popcount64((sel5(k, xa) ^ wv) & mv)
      pb = popcount64((sel5(k, xb) ^ wv) & mv)
      pc = popcount64((sel5(k, xc) ^ wv) & mv)
      pd = popcount64((sel5(k, xd) ^ wv) & mv)
      na, nb = kbz[ra, o] - 2 * pa, kbz[rb, o] - 2 * pb
      nc, nd = kbz[rc, o] - 2 * pc, kbz[rd, o] - 2 * pd
      fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
  elif has_mask:
    for o in range(w_t.shape[1]):
      na = kbz[ra, o] - 2 * dot5(w_t, m_t, o, xa, True)
      nb = kbz[rb, o] - 2 * dot5(w_t, m_t, o, xb, True)
      nc = kbz[rc, o] - 2 * dot5(w_t, m_t, o, xc, True)
      nd = kbz[rd, o] - 2 * dot5(w_t, m_t, o, xd, True)
      fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
  else:
    for o in range(w_t.shape[1]):
      na = kbz[ra, o] - 2 * dot5(w_t, m_t, o, xa, False)
      nb = kbz[rb, o] - 2 * dot5(w_t, m_t, o, xb, False)
      nc = kbz[rc, o] - 2 * dot5(w_t, m_t, o, xc, False)
      nd = kbz[rd, o] - 2 * dot5(w_t, m_t, o, xd, False)
      fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])


@njit(cache=True, inline="always")
def _bits_nine(xf, bases, q, w_t, m_t, goff, kbz, rows, um, nlo, nhi, opts, fl):
  """A window's bits from its 3x3 patches of one word per tap held in registers."""
  ba, bb, bc, bd = bases
  xa, xb, xc, xd = _patch9(xf, ba, q), _patch9(xf, bb, q), _patch9(xf, bc, q), _patch9(xf, bd, q)
  has_mask = opts.has_mask != 0
  if opts.pairs != 0:
    ya, yb, yc, yd = _paired(xa), _paired(xb), _paired(xc), _paired(xd)
    one = opts.one != 0
    _bits5(w_t, m_t, goff, kbz, rows, um, nlo, nhi, ya, yb, yc, yd, has_mask, one, fl)
  else:
    _bits9(w_t, m_t, kbz, rows, um, nlo, nhi, xa, xb, xc, xd, has_mask, fl)


@njit(cache=True, inline="always")
def _accumulate(xf, bases, foff, goff, w_t, m_t, acc, f, has_idx, has_mask):
  """Adds word ``f``'s popcounts of the window's 4 pixels to ``acc [4, O]``."""
  ba, bb, bc, bd = bases
  if has_idx:
    ua, ub, uc, ud = np.uint64(ba), np.uint64(bb), np.uint64(bc), np.uint64(bd)
    if has_mask:
      for o in range(w_t.shape[1]):
        g, wv, mv = goff[f, o], w_t[f, o], m_t[f, o]
        acc[0, o] += popcount64((xf[ua + g] ^ wv) & mv)
        acc[1, o] += popcount64((xf[ub + g] ^ wv) & mv)
        acc[2, o] += popcount64((xf[uc + g] ^ wv) & mv)
        acc[3, o] += popcount64((xf[ud + g] ^ wv) & mv)
    else:
      for o in range(w_t.shape[1]):
        g, wv = goff[f, o], w_t[f, o]
        acc[0, o] += popcount64(xf[ua + g] ^ wv)
        acc[1, o] += popcount64(xf[ub + g] ^ wv)
        acc[2, o] += popcount64(xf[uc + g] ^ wv)
        acc[3, o] += popcount64(xf[ud + g] ^ wv)
    return
  qf = foff[f]
  xa, xb, xc, xd = xf[ba + qf], xf[bb + qf], xf[bc + qf], xf[bd + qf]
  if has_mask:
    for o in range(w_t.shape[1]):
      wv, mv = w_t[f, o], m_t[f, o]
      acc[0, o] += popcount64((xa ^ wv) & mv)
      acc[1, o] += popcount64((xb ^ wv) & mv)
      acc[2, o] += popcount64((xc ^ wv) & mv)
      acc[3, o] += popcount64((xd ^ wv) & mv)
  else:
    for o in range(w_t.shape[1]):
      wv = w_t[f, o]
      acc[0, o] += popcount64(xa ^ wv)
      acc[1, o] += popcount64(xb ^ wv)
      acc[2, o] += popcount64(xc ^ wv)
      acc[3, o] += popcount64(xd ^ wv)


@njit(cache=True, inline="always")
def _bits_words(xf, bases, foff, goff, w_t, m_t, kbz, rows, um, nlo, nhi, opts, acc, fl):
  """A window's bits word by word (any patch): one gathered word per output without
  accumulators, else the popcounts accumulated over the words."""
  ra, rb, rc, rd = rows
  has_idx, has_mask = opts.has_idx != 0, opts.has_mask != 0
  if has_idx and w_t.shape[0] == 1 and not has_mask:  # one word per output
    ua, ub = np.uint64(bases[0]), np.uint64(bases[1])
    uc, ud = np.uint64(bases[2]), np.uint64(bases[3])
    for o in range(w_t.shape[1]):
      g, wv = goff[0, o], w_t[0, o]
      na = kbz[ra, o] - 2 * popcount64(xf[ua + g] ^ wv)
      nb = kbz[rb, o] - 2 * popcount64(xf[ub + g] ^ wv)
      nc = kbz[rc, o] - 2 * popcount64(xf[uc + g] ^ wv)
      nd = kbz[rd, o] - 2 * popcount64(xf[ud + g] ^ wv)
      fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
    return
  for f in range(w_t.shape[0]):
    _accumulate(xf, bases, foff, goff, w_t, m_t, acc, f, has_idx, has_mask)
  for o in range(w_t.shape[1]):
    na, nb = kbz[ra, o] - 2 * acc[0, o], kbz[rb, o] - 2 * acc[1, o]
    nc, nd = kbz[rc, o] - 2 * acc[2, o], kbz[rd, o] - 2 * acc[3, o]
    acc[0, o] = 0
    acc[1, o] = 0
    acc[2, o] = 0
    acc[3, o] = 0
    fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])


@njit(cache=True, inline="always")
def _store(out, b, i, j, fl, flb64, flags, cols, opts):
  """The window's bits into ``out[b, i, j]`` (8 per multiply; scattered among the constant
  bits of pruned channels; the window path's bytes as they are)."""
  if opts.window != 0:
    for w in range(out.shape[3]):
      out[b, i, j, w] = flb64[w]
  elif opts.scatter != 0:
    for o in range(cols.shape[0]):
      flags[cols[o]] = fl[o]
    pack_flags(flags, out[b, i, j])
  else:
    flw = fl.view(np.uint64)
    for w in range(out.shape[3]):
      word = np.uint64(0)
      for q in range(8):
        word |= ((flw[8 * w + q] * PACK_MUL) >> np.uint64(56)) << np.uint64(8 * q)
      out[b, i, j, w] = word


@njit(cache=True)
def bconv_sign_pool_range(
  xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi
):
  """Rows ``lo:hi`` (batch x pooled row) of ``sign(bn(max_pool2(conv(x))))`` packed, for a
  binary-input convolution (inputs and weights as in :func:`kernels.bconv_range`).

  Per output pixel the integer ``n = kbz[krow[p], o] - 2 popcount`` (``kbz``: the kept bits
  plus the padding correction, one row per border position and a last row without; int32)
  gives the bit ``s * n >= t`` (the float epilogue + batchnorm + sign, tabulated), taken as
  ``nlo <= n <= nhi`` in int32 (:func:`rules.sign_bounds`, :func:`simd.pool_bit32`); the max
  pool of the float outputs is the OR of the window's bits where ``mult >= 0`` and the AND
  elsewhere (every step is monotone), taken on the integers.  The 4 pixels of a pooling
  window are computed together, vectorised over the output channels: each weight word is
  loaded once per window; 9-word patches (a 3x3 kernel on up to 64 channels) run with the
  patch words in registers (:func:`dot9`; paired, :func:`dot5`), others accumulate word by
  word; the AVX-512 window path picks each output's word by a permute.  ``opts``: a
  :class:`ConvOpts`.  ``out [B, Ho // 2, Wo // 2, Cw]`` uint64; the patch is read in place:
  word ``f`` of the pixel at word ``base`` is ``xf[base + foff[f]]`` (``xf[base + goff[f,
  o]]`` when gathered: ``goff`` uint64, so that numba reads it without a negative-index
  check).  No array view is made inside the pixel loop (a view costs its reference counting:
  measured 20 of 62 us for conv2 of cnn_small in the word format)."""
  sh, sw, wo = opts.sh, opts.sw, opts.wo
  cw, hin, win = xbp.shape[3], xbp.shape[1], xbp.shape[2]
  xf = xbp.reshape(-1)
  hp, wp = out.shape[1], out.shape[2]
  o_s, n_f = w_t.shape[1], w_t.shape[0]
  flags = const.copy()
  fl = np.zeros(64 * out.shape[3], np.uint8)  # the bits past o_s stay 0
  acc = np.zeros((4, o_s), np.int64)
  flb = np.zeros(8 * out.shape[3], np.uint8)  # the bytes past o_s // 8 stay 0
  flb64 = flb.view(np.uint64)
  nine = (n_f == 9 or opts.pairs != 0 or opts.one != 0) and opts.has_idx == 0
  q = foff if nine else np.zeros(9, np.int64)
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    for j in range(wp):
      oh, ow = 2 * i, 2 * j
      ba = ((b * hin + oh * sh) * win + ow * sw) * cw
      bases = (ba, ba + sw * cw, ba + sh * win * cw, ba + sh * win * cw + sw * cw)
      p = oh * wo + ow
      rows = (krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1])
      if opts.window != 0:
        tab = window_rows(xf, ba, win)
        for o in range(0, o_s, 8):
          flb[o >> 3] = window_bits8(goff, w_t, m_t, kbz, rows, um, nlo, nhi, o, o_s, tab)
      elif nine:
        _bits_nine(xf, bases, q, w_t, m_t, goff, kbz, rows, um, nlo, nhi, opts, fl)
      else:
        _bits_words(xf, bases, foff, goff, w_t, m_t, kbz, rows, um, nlo, nhi, opts, acc, fl)
      _store(out, b, i, j, fl, flb64, flags, cols, opts)


@njit(cache=True, parallel=True)
def bconv_sign_pool_par(
  xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, chunks
):
  rows = out.shape[0] * out.shape[1]
  step = (rows + chunks - 1) // chunks
  for c in prange(chunks):
    lo, hi = c * step, min(rows, (c + 1) * step)
    args = (xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out)
    bconv_sign_pool_range(*args, lo, hi)


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


def conv_sign_rule(model, name: str, bn: str, corr: np.ndarray) -> dict | None:
  """Integer sign rule ``s * n >= t``, pool polarity and constant bits of a binary conv
  followed by max pool + ``bn`` + sign (see :func:`bconv_sign_pool_range`)."""
  f, p = model.fast[name], model.binary[name]
  mult, add = (np.asarray(a, np.float64) for a in model.bn[bn])
  kept = (p["eff"] != 0).sum(axis=1)
  nmax = int(np.max(np.abs(f["kbits"])) + 2 * np.max(kept) + np.abs(corr).max(initial=0)) + 1
  c = f["cols"]
  rule = sign_thresholds(f["kbits"], f["scale"], f["bias"][c], mult[c], add[c], nmax)
  if rule is None:
    return None
  width = f["bias"].shape[0]
  const = flag_bytes(width)
  if f["pruned_channels"]:
    const[:width] = (f["bias"] * mult + add >= 0).astype(np.uint8)
  s, t = rule
  pol = mult[c] >= 0  # the max pool is the OR of the bits (else the AND)
  um = np.where(pol, s >= 0, s < 0).astype(np.uint8)  # ... the bit of max(n) (else min(n))
  return {"s": s, "t": t, "um": um, "const": const}


def sign_pool_rule(model, name, bn, hw, cin, corr, border, window_ok) -> dict | None:
  """The arrays of :func:`bconv_sign_pool_range` for ``model``'s binary conv ``name`` followed
  by 2x2 max pool + ``bn`` + sign, on ``hw`` inputs of ``cin`` words per pixel (``corr``,
  ``border``: the padding correction per output position and where it is nonzero;
  ``window_ok``: the AVX-512 window path may be used), or None when the rule is not a
  threshold.  ``rule["args"]``: the kernel's arguments (``opts`` a :class:`ConvOpts`)."""
  h, w = hw
  f, spec = model.fast[name], model.spec[name]
  kh, kw = spec["kernel_size"]
  (pt, pb), (pl, pr) = spec["padding"]
  sh, sw = spec["strides"]
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  rule = conv_sign_rule(model, name, bn, corr)
  if rule is None:
    return None
  # patch word f -> its offset from the pixel's first word
  f_all = np.arange(kh * kw * cin)
  tap, q = f_all // cin, f_all % cin
  rule["foff"] = ((tap // kw) * (w + pl + pr) + tap % kw) * cin + q
  rule["goff"] = np.ascontiguousarray(rule["foff"][f["idx"]], np.uint64)
  geom = (kh, kw, sh, sw)
  w_t, m_t, flags, pairs, one, window = _patch_words(f, rule, geom, cin, window_ok)
  opts = [int(v) for v in (*flags, f["pruned_channels"], wo, sh, sw, pairs, one, window)]
  rule["opts"] = ConvOpts(*opts)
  rule["opts_array"] = np.array(opts, np.int64)
  # n = kbz[krow[p]] - 2 popcount: kept bits + padding correction, one row per border
  # position, the last row (kept bits alone) for the others
  rows = np.flatnonzero(border)
  kbz = np.vstack([f["kbits"] + corr[rows], f["kbits"]])
  assert np.abs(kbz).max(initial=0) < 1 << 29  # int32 with room for -2 popcount
  rule["kbz"] = np.ascontiguousarray(kbz, np.int32)
  rule["nlo"], rule["nhi"] = sign_bounds(rule["s"], rule["t"])
  rule["krow"] = np.full(len(border), len(rows), np.int64)
  rule["krow"][rows] = np.arange(len(rows))
  rule["args"] = (w_t, m_t, rule["foff"], rule["goff"], rule["kbz"], rule["krow"])
  rule["args"] += (rule["nlo"], rule["nhi"], rule["um"], rule["const"], f["cols"], rule["opts"])
  rule["out_hw"] = (ho // 2, wo // 2)
  return rule


def _patch_words(f: dict, rule: dict, geom, cin: int, window_ok: bool) -> tuple:
  """(w_t, m_t, (has_mask, has_idx), pairs, one, window): the weight words as the kernel
  reads them for this patch shape (may set ``rule["goff"]``)."""
  kh, kw, sh, sw = geom
  w_t, m_t, flags = f["w"], f["m"], f["flags"]
  half = np.uint64(32)
  nine = cin == 1 and kh * kw == 9
  pairs = nine and not np.any((w_t | m_t) >> half)  # up to 32 input channels
  if flags[1] and nine and (pairs or w_t.shape[0] > 1):
    # gathered words back in place, the others masked out: 9 (or paired, 5) masked words
    # in registers, measured faster than gathered words (cnn_small's conv2 in the word
    # format: 38 vs 43 us for one word per output; conv3: 29 vs 34 us for two)
    o_s = w_t.shape[1]
    keep = m_t != 0
    cols = np.broadcast_to(np.arange(o_s), w_t.shape)[keep]
    w9, m9 = np.zeros((9, o_s), np.uint64), np.zeros((9, o_s), np.uint64)
    w9[f["idx"][keep], cols], m9[f["idx"][keep], cols] = w_t[keep], m_t[keep]
    w_t, m_t, flags = w9, m9, (True, False)
  if pairs:  # taps 2k and 2k + 1 in one word (see bconv_sign_pool_range)
    pad = np.zeros((1, w_t.shape[1]), np.uint64)
    w_t, m_t = (np.concatenate([a, pad]) for a in (w_t, m_t))
    w_t, m_t = (np.ascontiguousarray(a[0::2] | (a[1::2] << half)) for a in (w_t, m_t))
  # each output's one paired word (its index in goff) selected in registers: cnn_small's
  # conv2 in the word format at 0.95, 28 vs 35 us; not for 9 words (conv3: 25 vs 24 us)
  one = pairs and flags[0] and not flags[1] and np.all((m_t != 0).sum(axis=0) <= 1)
  if one:
    k = np.argmax(m_t != 0, axis=0)
    cols = np.arange(w_t.shape[1])
    w_t, m_t = w_t[k, cols][None], m_t[k, cols][None]
    rule["goff"] = k.astype(np.uint64)[None]
  # one gathered word per output of a 3x3, stride-1 patch of one word per pixel (cnn_small's
  # conv2 and conv3 in the word format at >= 0.89), with AVX-512: each output's word picked
  # by a permute from the window's 4 x 4 input words (simd.window_bits8), 8 outputs at a
  # time; measured conv2 11.0 us (28.4 by sel5), conv3 5.9 us (25.1 gathered)
  window = window_ok and f["flags"][1] and f["w"].shape[0] == 1 and cin == 1
  window = window and (kh, kw, sh, sw) == (3, 3, 1, 1) and not f["pruned_channels"]
  window = window and f["w"].shape[1] % 8 == 0
  if window:  # the word of tap t of pixel (0, 0) is number 4 (t // 3) + t % 3 of the 16
    tap = f["idx"][0]
    rule["goff"] = (4 * (tap // 3) + tap % 3).astype(np.uint64)[None]
    w_t, m_t, flags = f["w"], f["m"], (True, False)
    pairs = one = False
  return w_t, m_t, flags, pairs, one, window
