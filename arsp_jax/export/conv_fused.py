"""Fused binary convolutions of the compiled engine: conv + 2x2 max pool + batchnorm + sign +
pack in one kernel (:func:`bconv_sign_pool_range`, one row function per patch layout), with
its load-time preparation (:func:`sign_pool_rule`: the integer sign rule, the weight words
as the kernel reads them, the options as the named fields of :class:`ConvOpts`).
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
def _window_geometry(b, i, j, hin, win, cw, sh, sw, wo):
  """The first word of a pooling window's 4 pixels in the padded input, and the window's
  first output position ``p`` (pixels ``p``, ``p + 1``, ``p + wo``, ``p + wo + 1``)."""
  oh, ow = 2 * i, 2 * j
  ba = ((b * hin + oh * sh) * win + ow * sw) * cw
  return ba, ba + sw * cw, ba + sh * win * cw, ba + sh * win * cw + sw * cw, oh * wo + ow


@njit(cache=True)
def _store_row(out, b, i, fl, flags, cols, scatter):
  """A row of windows' bits (``fl [Wq, 64 Cw]``, one byte each) packed into ``out[b, i]``: 8
  per multiply, or scattered among the constant bits of pruned channels (``flags``).  Once
  per row: an inlined call per pixel with arrays costs their reference counting (measured
  +30% on cnn_small's conv2)."""
  flw = fl.view(np.uint64)
  for j in range(out.shape[2]):
    if scatter:
      for o in range(cols.shape[0]):
        flags[cols[o]] = fl[j, o]
      pack_flags(flags, out[b, i, j])
    else:
      for w in range(out.shape[3]):
        word = np.uint64(0)
        for q in range(8):
          word |= ((flw[j, 8 * w + q] * PACK_MUL) >> np.uint64(56)) << np.uint64(8 * q)
        out[b, i, j, w] = word


@njit(cache=True)
def _rows_window(xbp, w_t, m_t, goff, kbz, krow, nlo, nhi, um, opts, out, lo, hi):
  """AVX-512 window path (``opts.window``): per window its 4 x 4 input words in two tables,
  each output's word picked by a permute, 8 outputs' pooled bits per byte
  (:func:`simd.window_bits8`)."""
  cw, hin, win = xbp.shape[3], xbp.shape[1], xbp.shape[2]
  xf = xbp.reshape(-1)
  hp, wp, o_s = out.shape[1], out.shape[2], w_t.shape[1]
  flb = np.zeros(8 * out.shape[3], np.uint8)  # the bytes past o_s // 8 stay 0
  flb64 = flb.view(np.uint64)
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    for j in range(wp):
      ba, _, _, _, p = _window_geometry(b, i, j, hin, win, cw, opts.sh, opts.sw, opts.wo)
      wo = opts.wo
      rows = (krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1])
      tab = window_rows(xf, ba, win)
      for o in range(0, o_s, 8):
        flb[o >> 3] = window_bits8(goff, w_t, m_t, kbz, rows, um, nlo, nhi, o, o_s, tab)
      for w in range(out.shape[3]):
        out[b, i, j, w] = flb64[w]


@njit(cache=True)
def _rows_nine(xbp, w_t, m_t, foff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi):
  """9 patch words in place (a 3x3 kernel on one word per pixel), held in registers
  (:func:`dot9`)."""
  cw, hin, win, wo = xbp.shape[3], xbp.shape[1], xbp.shape[2], opts.wo
  xf = xbp.reshape(-1)
  hp, wp, o_s = out.shape[1], out.shape[2], w_t.shape[1]
  flags, fl = const.copy(), np.zeros((wp, 64 * out.shape[3]), np.uint8)  # bits past o_s: 0
  has_mask, scatter = opts.has_mask != 0, opts.scatter != 0
  q0, q1, q2, q3, q4, q5, q6, q7, q8 = (
    foff[0],
    foff[1],
    foff[2],
    foff[3],
    foff[4],
    foff[5],
    foff[6],
    foff[7],
    foff[8],
  )
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    for j in range(wp):
      ba, bb, bc, bd, p = _window_geometry(b, i, j, hin, win, cw, opts.sh, opts.sw, wo)
      ra, rb, rc, rd = krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1]
      # fmt: off
      xa = (xf[ba + q0], xf[ba + q1], xf[ba + q2], xf[ba + q3], xf[ba + q4],
            xf[ba + q5], xf[ba + q6], xf[ba + q7], xf[ba + q8])
      xb = (xf[bb + q0], xf[bb + q1], xf[bb + q2], xf[bb + q3], xf[bb + q4],
            xf[bb + q5], xf[bb + q6], xf[bb + q7], xf[bb + q8])
      xc = (xf[bc + q0], xf[bc + q1], xf[bc + q2], xf[bc + q3], xf[bc + q4],
            xf[bc + q5], xf[bc + q6], xf[bc + q7], xf[bc + q8])
      xd = (xf[bd + q0], xf[bd + q1], xf[bd + q2], xf[bd + q3], xf[bd + q4],
            xf[bd + q5], xf[bd + q6], xf[bd + q7], xf[bd + q8])
      # fmt: on
      if has_mask:
        for o in range(o_s):
          na = kbz[ra, o] - 2 * dot9(w_t, m_t, o, xa, True)
          nb = kbz[rb, o] - 2 * dot9(w_t, m_t, o, xb, True)
          nc = kbz[rc, o] - 2 * dot9(w_t, m_t, o, xc, True)
          nd = kbz[rd, o] - 2 * dot9(w_t, m_t, o, xd, True)
          fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
      else:
        for o in range(o_s):
          na = kbz[ra, o] - 2 * dot9(w_t, m_t, o, xa, False)
          nb = kbz[rb, o] - 2 * dot9(w_t, m_t, o, xb, False)
          nc = kbz[rc, o] - 2 * dot9(w_t, m_t, o, xc, False)
          nd = kbz[rd, o] - 2 * dot9(w_t, m_t, o, xd, False)
          fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
    _store_row(out, b, i, fl, flags, cols, scatter)


@njit(cache=True)
def _rows_pairs(xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi):
  """Paired patches (``opts.pairs``): 5 words per patch (:func:`dot5`), or with
  ``opts.one`` each output's one word picked by :func:`sel5`."""
  cw, hin, win, wo = xbp.shape[3], xbp.shape[1], xbp.shape[2], opts.wo
  xf = xbp.reshape(-1)
  hp, wp, o_s = out.shape[1], out.shape[2], w_t.shape[1]
  flags, fl = const.copy(), np.zeros((wp, 64 * out.shape[3]), np.uint8)  # bits past o_s: 0
  has_mask, scatter, one = opts.has_mask != 0, opts.scatter != 0, opts.one != 0
  q0, q1, q2, q3, q4, q5, q6, q7, q8 = (
    foff[0],
    foff[1],
    foff[2],
    foff[3],
    foff[4],
    foff[5],
    foff[6],
    foff[7],
    foff[8],
  )
  hi32 = np.uint64(32)
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    for j in range(wp):
      ba, bb, bc, bd, p = _window_geometry(b, i, j, hin, win, cw, opts.sh, opts.sw, wo)
      ra, rb, rc, rd = krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1]
      xa = (
        xf[ba + q0] | (xf[ba + q1] << hi32),
        xf[ba + q2] | (xf[ba + q3] << hi32),
        xf[ba + q4] | (xf[ba + q5] << hi32),
        xf[ba + q6] | (xf[ba + q7] << hi32),
        xf[ba + q8],
      )
      xb = (
        xf[bb + q0] | (xf[bb + q1] << hi32),
        xf[bb + q2] | (xf[bb + q3] << hi32),
        xf[bb + q4] | (xf[bb + q5] << hi32),
        xf[bb + q6] | (xf[bb + q7] << hi32),
        xf[bb + q8],
      )
      xc = (
        xf[bc + q0] | (xf[bc + q1] << hi32),
        xf[bc + q2] | (xf[bc + q3] << hi32),
        xf[bc + q4] | (xf[bc + q5] << hi32),
        xf[bc + q6] | (xf[bc + q7] << hi32),
        xf[bc + q8],
      )
      xd = (
        xf[bd + q0] | (xf[bd + q1] << hi32),
        xf[bd + q2] | (xf[bd + q3] << hi32),
        xf[bd + q4] | (xf[bd + q5] << hi32),
        xf[bd + q6] | (xf[bd + q7] << hi32),
        xf[bd + q8],
      )
      if one:
        for o in range(o_s):
          k, wv, mv = goff[0, o], w_t[0, o], m_t[0, o]
          na = kbz[ra, o] - 2 * popcount64((sel5(k, xa) ^ wv) & mv)
          nb = kbz[rb, o] - 2 * popcount64((sel5(k, xb) ^ wv) & mv)
          nc = kbz[rc, o] - 2 * popcount64((sel5(k, xc) ^ wv) & mv)
          nd = kbz[rd, o] - 2 * popcount64((sel5(k, xd) ^ wv) & mv)
          fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
      elif has_mask:
        for o in range(o_s):
          na = kbz[ra, o] - 2 * dot5(w_t, m_t, o, xa, True)
          nb = kbz[rb, o] - 2 * dot5(w_t, m_t, o, xb, True)
          nc = kbz[rc, o] - 2 * dot5(w_t, m_t, o, xc, True)
          nd = kbz[rd, o] - 2 * dot5(w_t, m_t, o, xd, True)
          fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
      else:
        for o in range(o_s):
          na = kbz[ra, o] - 2 * dot5(w_t, m_t, o, xa, False)
          nb = kbz[rb, o] - 2 * dot5(w_t, m_t, o, xb, False)
          nc = kbz[rc, o] - 2 * dot5(w_t, m_t, o, xc, False)
          nd = kbz[rd, o] - 2 * dot5(w_t, m_t, o, xd, False)
          fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
    _store_row(out, b, i, fl, flags, cols, scatter)


@njit(cache=True)
def _accumulate_row(xf, b, i, geo, foff, goff, w_t, m_t, acc, has_idx, has_mask):
  """Popcounts of a row of windows' 4 pixels, word by word, into ``acc [Wq, 4, O]``."""
  hin, win, cw, sh, sw, wo = geo
  for j in range(acc.shape[0]):
    ba, bb, bc, bd, _ = _window_geometry(b, i, j, hin, win, cw, sh, sw, wo)
    ua, ub, uc, ud = np.uint64(ba), np.uint64(bb), np.uint64(bc), np.uint64(bd)
    for f in range(w_t.shape[0]):
      qf = foff[f]
      xa, xb, xc, xd = xf[ba + qf], xf[bb + qf], xf[bc + qf], xf[bd + qf]
      if has_idx and has_mask:
        for o in range(w_t.shape[1]):
          g, wv, mv = goff[f, o], w_t[f, o], m_t[f, o]
          acc[j, 0, o] += popcount64((xf[ua + g] ^ wv) & mv)
          acc[j, 1, o] += popcount64((xf[ub + g] ^ wv) & mv)
          acc[j, 2, o] += popcount64((xf[uc + g] ^ wv) & mv)
          acc[j, 3, o] += popcount64((xf[ud + g] ^ wv) & mv)
      elif has_idx:
        for o in range(w_t.shape[1]):
          g, wv = goff[f, o], w_t[f, o]
          acc[j, 0, o] += popcount64(xf[ua + g] ^ wv)
          acc[j, 1, o] += popcount64(xf[ub + g] ^ wv)
          acc[j, 2, o] += popcount64(xf[uc + g] ^ wv)
          acc[j, 3, o] += popcount64(xf[ud + g] ^ wv)
      elif has_mask:
        for o in range(w_t.shape[1]):
          wv, mv = w_t[f, o], m_t[f, o]
          acc[j, 0, o] += popcount64((xa ^ wv) & mv)
          acc[j, 1, o] += popcount64((xb ^ wv) & mv)
          acc[j, 2, o] += popcount64((xc ^ wv) & mv)
          acc[j, 3, o] += popcount64((xd ^ wv) & mv)
      else:
        for o in range(w_t.shape[1]):
          wv = w_t[f, o]
          acc[j, 0, o] += popcount64(xa ^ wv)
          acc[j, 1, o] += popcount64(xb ^ wv)
          acc[j, 2, o] += popcount64(xc ^ wv)
          acc[j, 3, o] += popcount64(xd ^ wv)


@njit(cache=True)
def _rows_words(xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi):
  """Any patch, word by word: the popcounts of each row of windows accumulated over the
  words (:func:`_accumulate_row`), then their pooled bits."""
  cw, hin, win, wo = xbp.shape[3], xbp.shape[1], xbp.shape[2], opts.wo
  geo = (hin, win, cw, opts.sh, opts.sw, wo)
  xf = xbp.reshape(-1)
  hp, wp, o_s = out.shape[1], out.shape[2], w_t.shape[1]
  flags, fl = const.copy(), np.zeros((wp, 64 * out.shape[3]), np.uint8)  # bits past o_s: 0
  acc = np.zeros((wp, 4, o_s), np.int64)
  has_mask, has_idx, scatter = opts.has_mask != 0, opts.has_idx != 0, opts.scatter != 0
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    acc[:] = 0
    _accumulate_row(xf, b, i, geo, foff, goff, w_t, m_t, acc, has_idx, has_mask)
    for j in range(wp):
      p = 2 * i * wo + 2 * j
      ra, rb, rc, rd = krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1]
      for o in range(o_s):
        na, nb = kbz[ra, o] - 2 * acc[j, 0, o], kbz[rb, o] - 2 * acc[j, 1, o]
        nc, nd = kbz[rc, o] - 2 * acc[j, 2, o], kbz[rd, o] - 2 * acc[j, 3, o]
        fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
    _store_row(out, b, i, fl, flags, cols, scatter)


@njit(cache=True)
def _rows_one_word(xbp, w_t, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi):
  """One gathered word per output, no mask: no accumulators."""
  cw, hin, win, wo = xbp.shape[3], xbp.shape[1], xbp.shape[2], opts.wo
  xf = xbp.reshape(-1)
  hp, wp, o_s = out.shape[1], out.shape[2], w_t.shape[1]
  flags, fl = const.copy(), np.zeros((wp, 64 * out.shape[3]), np.uint8)  # bits past o_s: 0
  scatter = opts.scatter != 0
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    for j in range(wp):
      ba, bb, bc, bd, p = _window_geometry(b, i, j, hin, win, cw, opts.sh, opts.sw, wo)
      ra, rb, rc, rd = krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1]
      ua, ub, uc, ud = np.uint64(ba), np.uint64(bb), np.uint64(bc), np.uint64(bd)
      for o in range(o_s):
        g, wv = goff[0, o], w_t[0, o]
        na = kbz[ra, o] - 2 * popcount64(xf[ua + g] ^ wv)
        nb = kbz[rb, o] - 2 * popcount64(xf[ub + g] ^ wv)
        nc = kbz[rc, o] - 2 * popcount64(xf[uc + g] ^ wv)
        nd = kbz[rd, o] - 2 * popcount64(xf[ud + g] ^ wv)
        fl[j, o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
    _store_row(out, b, i, fl, flags, cols, scatter)


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
  word (one function per path, each with its pixel loops: a call per pixel with arrays
  costs their reference counting); the AVX-512 window path picks each output's word by a
  permute.  ``opts``: a
  :class:`ConvOpts`.  ``out [B, Ho // 2, Wo // 2, Cw]`` uint64; the patch is read in place:
  word ``f`` of the pixel at word ``base`` is ``xf[base + foff[f]]`` (``xf[base + goff[f,
  o]]`` when gathered: ``goff`` uint64, so that numba reads it without a negative-index
  check).  No array view is made inside the pixel loop (a view costs its reference counting:
  measured 20 of 62 us for conv2 of cnn_small in the word format)."""
  args = (xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi)
  nine = (w_t.shape[0] == 9 or opts.pairs != 0 or opts.one != 0) and opts.has_idx == 0
  if opts.window != 0:
    _rows_window(xbp, w_t, m_t, goff, kbz, krow, nlo, nhi, um, opts, out, lo, hi)
  elif nine and (opts.pairs != 0 or opts.one != 0):
    _rows_pairs(*args)
  elif nine:
    _rows_nine(xbp, w_t, m_t, foff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi)
  elif opts.has_idx != 0 and w_t.shape[0] == 1 and opts.has_mask == 0:
    _rows_one_word(xbp, w_t, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi)
  else:
    _rows_words(*args)


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
