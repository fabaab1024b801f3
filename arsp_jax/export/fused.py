"""Whole-model fused forward pass of the compiled engine for BNN MLPs (one numba call).

At batch 1 the per-layer costs around the popcounts (Python and dispatch per layer, the
output arrays, the epilogue over every output) were most of a binary layer's time.  For a
BNN ``mlp`` (real-input ``fc1``, binary-input hidden layers, a float or binary ``out``) the
whole forward pass is one call of :func:`mlp_forward` over prepared arrays and scratch
buffers (no allocation per call but the logits):

* **fc1 on 8-bit pixels, exactly.**  The model's inputs are standardised pixels
  ``x = float32(float32(u) - mean) / std`` (``EngineBase.preprocess`` and the data pipeline
  compute exactly this).  A row whose every ``x`` is that value for an integer ``u`` in
  0..255 (checked per row, in float32 like the pipeline) runs on the integers:
  ``W . u = sum_p 2^p (popcount(plane_p AND w+) - popcount(plane_p AND w-))`` over the 8
  bit planes of ``u`` (8 popcounts per 64-bit weight word instead of 64 multiply-adds;
  dense ``+-1`` rows need only ``w+``: ``2 W+ . u - sum(u)``), then
  ``W . x = (W . u - W . mean) / std`` in float64.  Chosen by measurement
  (``fc1_batch1_kernels_ms`` in ``bench/results/inference.json``): the subset-sum tables need a table gather per weight byte, and an int16 dot product
  reads the whole +-1 matrix per sample (LLVM emits ``vpmaddwd``, no VNNI from numba); both
  were slower than the planes.
  Other rows (not pixels) use the subset-sum tables of :mod:`arsp_jax.export.kernels`.
* **Epilogue as integer thresholds.**  A hidden binary layer's output only feeds
  ``sign(batchnorm(.))``; the float64 expression ``((n * scale + bias) * mult + add >= 0)``
  of the popcount result ``n`` (an integer) is monotone in ``n``, so it is tabulated at load
  time over every reachable ``n`` and replaced by ``lo <= popcount <= hi``:
  the same bits as the float epilogue, as a vectorised integer compare into bytes, packed
  8 bytes at a time with one multiply.
* the last hidden layer's ``clip(batchnorm(.))`` and the float ``out`` layer run in the
  same call (float64).

``cycles`` (optional) receives the time-stamp counter per layer for ``profile``.
"""

from __future__ import annotations

import time

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from arsp_jax.export import words
from arsp_jax.export.kernels import (
  bdense_range,
  lut_rows,
  popcount64,
  popcount_rows,
  subset_sums,
)

PACK_MUL = np.uint64(0x0102040810204080)  # 8 bytes of 0/1 -> 8 bits in the top byte
LOW_BITS = np.uint64(0x0101010101010101)


@intrinsic
def read_cycles(typingctx):
  """The CPU's time-stamp counter (LLVM ``readcyclecounter``: ``rdtsc`` on x86)."""
  sig = types.int64()

  def codegen(context, builder, signature, args):
    fnty = ir.FunctionType(ir.IntType(64), [])
    fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=fnty)
    return builder.call(fn, [])

  return sig, codegen


@njit(cache=True)
def cycles_now():
  return read_cycles()


_TSC_HZ: list = []


def tsc_hz() -> float:
  """Time-stamp counter ticks per second (measured once per process over 20 ms)."""
  if not _TSC_HZ:
    c0, t0 = cycles_now(), time.perf_counter()
    time.sleep(0.02)
    c1, t1 = cycles_now(), time.perf_counter()
    _TSC_HZ.append((c1 - c0) / (t1 - t0))
  return _TSC_HZ[0]


# --------------------------------------------------------------------------- flat storage

# One model's arrays live in six contiguous buffers (by dtype) plus a table of (offset,
# rows, cols) per array: a call unboxes 7 arrays instead of ~45 (numba unboxes each array
# argument through the C API, ~0.1 us each: 4.5 us per call measured for the tuples).
# int32 holds the binary layers' popcount counts and kept-bit counts: their float epilogue
# vectorises ~3x better from int32 than from int64 (measured: 0.2 vs 0.65 us per 1024 outputs).
BUFFERS = (np.uint64, np.int64, np.float64, np.float32, np.uint8, np.int32)
ALIGN = 8  # elements: every array starts on an 8-byte boundary (``pack_flags`` views bytes)

# First layer (fc1, real inputs): array slots.
F_MEAN, F_STD, F_MEANF, F_STDF, F_U8, F_PLANES, F_USUM, F_WP, F_WN, F_IDX = range(10)
F_MOFF, F_SD, F_POS, F_NEG, F_GIDX, F_TABLE, F_ACCF, F_ACCI, F_SCALE, F_COLS = range(10, 20)
F_BIAS, F_Y, F_MULT, F_ADD, F_FLAGS, F_WORDS, F_OPTS = range(20, 27)
N_FIRST = 27
# Binary-input layers.
B_W, B_M, B_IDX, B_KBITS, B_SCALE, B_COLS, B_BIAS, B_LO, B_HI, B_ACC = range(10)
B_FLAGS, B_WORDS, B_Y, B_OPTS, B_SEG = range(10, 15)
N_BINARY = 15
# The float ``out`` layer.
L_MULT, L_ADD, L_KERN_T, L_BOUT, L_Z, L_OPTS = range(6)

# opts of the first layer
O_PIXELS, O_PLANE_MODE, O_LUT_NEG = range(3)  # plane modes: see plane_rows
# opts of a binary layer
O_MASK, O_GATHER, O_SCATTER, O_FLOAT, O_SORTED, O_SELECT16 = range(6)


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
def _span(buf, meta, k):
  o = meta[k, 1]
  return buf[o : o + meta[k, 2] * meta[k, 3]]


@njit(cache=True, inline="always")
def _grid(buf, meta, k):
  o = meta[k, 1]
  return buf[o : o + meta[k, 2] * meta[k, 3]].reshape(meta[k, 2], meta[k, 3])


# --------------------------------------------------------------------------- kernels


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
def pixel_planes(x, mean, std, meanf, stdf, u8, planes, usum):
  """If every ``x[i]`` equals ``float32(float32(u) - meanf[i]) / stdf[i]`` for an integer
  ``u`` in 0..255 (``mean``/``std``: per input element): writes ``u`` to ``u8`` (zero padded
  to ``64 * W``), its bit planes to ``planes [W, 8]``, the sum of each word's ``u`` to
  ``usum [W]`` and returns ``sum(u)``; else returns -1."""
  ok = True
  for i in range(x.shape[0]):
    v = np.floor(np.float64(x[i]) * std[i] + mean[i] + 0.5)
    good = v >= 0.0 and v <= 255.0
    vc = v if good else 0.0
    ok &= good and (np.float32(vc) - meanf[i]) / stdf[i] == x[i]
    u8[i] = np.uint8(vc)
  if not ok:
    return -1
  v64 = u8.view(np.uint64)
  total = 0
  for j in range(planes.shape[0]):
    s = 0
    for b in range(64):
      s += np.int64(u8[64 * j + b])
    usum[j] = s
    total += s
    for p in range(8):
      acc = np.uint64(0)
      for q in range(8):
        chunk = (v64[8 * j + q] >> np.uint64(p)) & LOW_BITS
        acc |= ((chunk * PACK_MUL) >> np.uint64(56)) << np.uint64(8 * q)
      planes[j, p] = acc
  return total


@njit(cache=True, inline="always")
def plane_dot(pl, j, w):
  """``sum_p 2^p popcount(planes[j, p] AND w)``."""
  return (
    popcount64(pl[j, 0] & w)
    + (popcount64(pl[j, 1] & w) << 1)
    + (popcount64(pl[j, 2] & w) << 2)
    + (popcount64(pl[j, 3] & w) << 3)
    + (popcount64(pl[j, 4] & w) << 4)
    + (popcount64(pl[j, 5] & w) << 5)
    + (popcount64(pl[j, 6] & w) << 6)
    + (popcount64(pl[j, 7] & w) << 7)
  )


@njit(cache=True)
def plane_rows(pl, usum, wp_t, wn_t, idx_t, mode, acc):
  """``acc[o] = W . u`` for the +1/-1/0 weights of output ``o`` from the bit planes
  ``pl [W, 8]`` of ``u``: ``wp_t``/``wn_t`` ``[F, O]`` the +1/-1 bits of the weight words,
  entry ``(f, o)`` on input word ``f`` (mode 0) or ``idx_t[f, o]`` (modes 1, 2).
  Mode 0 (dense +-1): ``2 W+ . u - sum(u)`` by the caller; mode 1 (whole kept words of
  +-1, gathered): ``2 W+ . u - usum`` per word, mode 4 the same in place (a word with no
  kept weight adds nothing); modes 2 (gathered) and 3 (in place), partial words:
  ``W+ . u - W- . u``.  Vectorised over ``o``."""
  n = acc.shape[0]
  for o in range(n):
    acc[o] = 0
  for f in range(wp_t.shape[0]):
    wr = wp_t[f]
    if mode == 0:
      for o in range(n):
        acc[o] += plane_dot(pl, f, wr[o])
    elif mode == 3:
      nr = wn_t[f]
      for o in range(n):
        acc[o] += plane_dot(pl, f, wr[o]) - plane_dot(pl, f, nr[o])
    elif mode == 4:
      nr = wn_t[f]
      uf = usum[f]
      for o in range(n):
        acc[o] += 2 * plane_dot(pl, f, wr[o]) - (uf if (wr[o] | nr[o]) != 0 else 0)
    elif mode == 1:
      ir_ = idx_t[f]
      for o in range(n):
        acc[o] += 2 * plane_dot(pl, ir_[o], wr[o]) - usum[ir_[o]]
    else:
      ir_ = idx_t[f]
      nr = wn_t[f]
      for o in range(n):
        acc[o] += plane_dot(pl, ir_[o], wr[o]) - plane_dot(pl, ir_[o], nr[o])


@njit(cache=True)
def bn_sign_flags(y, mult, add, flags):
  for c in range(y.shape[0]):
    flags[c] = np.uint8(y[c] * mult[c] + add[c] >= 0)


@njit(cache=True)
def first_layer(x, B):
  """fc1 of one row ``x [R]`` float32 -> the packed ``sign(bn1(fc1(x)))`` words."""
  ub, ib, fb, sb, bb, i4, meta = B
  opts = _span(ib, meta, F_OPTS)
  scale, cols, bias = _span(fb, meta, F_SCALE), _span(ib, meta, F_COLS), _span(fb, meta, F_BIAS)
  y = _span(fb, meta, F_Y)
  o_s = scale.shape[0]
  total = -1
  if opts[O_PIXELS]:
    planes, usum = _grid(ub, meta, F_PLANES), _span(ib, meta, F_USUM)
    mean, std = _span(fb, meta, F_MEAN), _span(fb, meta, F_STD)
    meanf, stdf = _span(sb, meta, F_MEANF), _span(sb, meta, F_STDF)
    total = pixel_planes(x, mean, std, meanf, stdf, _span(bb, meta, F_U8), planes, usum)
  if total >= 0:  # integers: bit planes
    acci = _span(ib, meta, F_ACCI)
    wp, wn, idx = _grid(ub, meta, F_WP), _grid(ub, meta, F_WN), _grid(ib, meta, F_IDX)
    plane_rows(planes, usum, wp, wn, idx, opts[O_PLANE_MODE], acci)
    if opts[O_PLANE_MODE] == 0:  # dense +-1 rows: W . u = 2 W+ . u - sum(u)
      for o in range(o_s):
        acci[o] = 2 * acci[o] - total
    moff, sd = _span(fb, meta, F_MOFF), _span(fb, meta, F_SD)[0]
    for o in range(o_s):
      y[cols[o]] = ((acci[o] - moff[o]) / sd) * scale[o] + bias[cols[o]]
  else:  # float inputs: 8-bit subset-sum tables
    table, accf = _grid(fb, meta, F_TABLE), _span(fb, meta, F_ACCF)
    pos, neg, gidx = _grid(bb, meta, F_POS), _grid(bb, meta, F_NEG), _grid(ib, meta, F_GIDX)
    subset_sums(x, table)
    lut_rows(table, pos, neg, gidx, opts[O_LUT_NEG] != 0, accf, 0, o_s)
    for o in range(o_s):
      y[cols[o]] = accf[o] * scale[o] + bias[cols[o]]
  flags = _span(bb, meta, F_FLAGS)
  bn_sign_flags(y, _span(fb, meta, F_MULT), _span(fb, meta, F_ADD), flags)
  out_words = _span(ub, meta, F_WORDS)
  pack_flags(flags, out_words)
  return out_words


@njit(cache=True)
def sign_words(xw, w, m, idx, has_mask, has_idx, acc, lo, hi, cols, scatter, flags, out_words):
  """Packed ``sign(bn(.))`` of a binary-input layer on packed ``xw`` by the integer rule
  ``lo <= popcount <= hi`` per output (pruned channels: constant bits already in
  ``flags``)."""
  popcount_rows(xw, w, m, idx, acc, has_mask, has_idx)
  if scatter:
    for o in range(acc.shape[0]):
      flags[cols[o]] = np.uint8((acc[o] >= lo[o]) & (acc[o] <= hi[o]))
  else:
    for o in range(acc.shape[0]):
      flags[o] = np.uint8((acc[o] >= lo[o]) & (acc[o] <= hi[o]))
  pack_flags(flags, out_words)


@njit(cache=True)
def popcount_rows_sorted(xv, w_t, m_t, idx_t, acc, has_mask, seg):
  """:func:`popcount_rows` of a gathered layer whose outputs are sorted by their first kept
  word: entry 0 of outputs ``seg[j]:seg[j + 1]`` reads input word ``j`` (no gather)."""
  w0, m0 = w_t[0], m_t[0]
  for j in range(seg.shape[0] - 1):
    xf = xv[j]
    if has_mask:
      for o in range(seg[j], seg[j + 1]):
        acc[o] = popcount64((xf ^ w0[o]) & m0[o])
    else:
      for o in range(seg[j], seg[j + 1]):
        acc[o] = popcount64(xf ^ w0[o])
  for f in range(1, w_t.shape[0]):
    wrow, irow, mrow = w_t[f], idx_t[f], m_t[f]
    if has_mask:
      for o in range(acc.shape[0]):
        acc[o] += popcount64((xv[irow[o]] ^ wrow[o]) & mrow[o])
    else:
      for o in range(acc.shape[0]):
        acc[o] += popcount64(xv[irow[o]] ^ wrow[o])


@njit(cache=True)
def float_outputs(xw, w, m, idx, has_mask, has_idx, acc, kbits, scale, cols, bias, y, scatter):
  """``y[cols] = (K - 2 popcount) * scale + bias`` of a binary-input layer."""
  popcount_rows(xw, w, m, idx, acc, has_mask, has_idx)
  if scatter:
    for o in range(acc.shape[0]):
      y[cols[o]] = (kbits[o] - 2 * acc[o]) * scale[o] + bias[cols[o]]
  else:  # contiguous: vectorised
    for o in range(acc.shape[0]):
      y[o] = (kbits[o] - 2 * acc[o]) * scale[o] + bias[o]


@njit(cache=True)
def sign_layer(xw, B, base):
  """A binary-input dense layer (slots from ``base``) on packed ``xw`` -> the packed
  ``sign(bn(.))`` of its output.  The arrays are taken out of the buffers here and passed to
  a separate kernel, and the float-output case is another function: one function with both
  branches measured 2.0 vs 1.3 us per call for a 1-word fixed fan-in layer of 1024 outputs."""
  ub, ib, fb, sb, bb, i4, meta = B
  opts = _span(ib, meta, base + B_OPTS)
  acc, cols = _span(i4, meta, base + B_ACC), _span(ib, meta, base + B_COLS)
  w, m, idx = (
    _grid(ub, meta, base + B_W),
    _grid(ub, meta, base + B_M),
    _grid(ib, meta, base + B_IDX),
  )
  lo, hi = _span(ib, meta, base + B_LO), _span(ib, meta, base + B_HI)
  flags, out_words = _span(bb, meta, base + B_FLAGS), _span(ub, meta, base + B_WORDS)
  has_mask, has_idx, scatter = opts[O_MASK] != 0, opts[O_GATHER] != 0, opts[O_SCATTER] != 0
  sign_words(xw, w, m, idx, has_mask, has_idx, acc, lo, hi, cols, scatter, flags, out_words)
  return out_words


@njit(cache=True)
def float_layer(xw, B, base):
  """A binary-input dense layer's float outputs ``y`` (the last binary layer)."""
  ub, ib, fb, sb, bb, i4, meta = B
  opts = _span(ib, meta, base + B_OPTS)
  acc, cols = _span(i4, meta, base + B_ACC), _span(ib, meta, base + B_COLS)
  w, m, idx = (
    _grid(ub, meta, base + B_W),
    _grid(ub, meta, base + B_M),
    _grid(ib, meta, base + B_IDX),
  )
  kbits, scale = _span(i4, meta, base + B_KBITS), _span(fb, meta, base + B_SCALE)
  bias, y = _span(fb, meta, base + B_BIAS), _span(fb, meta, base + B_Y)
  has_mask, has_idx, scatter = opts[O_MASK] != 0, opts[O_GATHER] != 0, opts[O_SCATTER] != 0
  if opts[O_SORTED] and w.shape[0] == 1 and not has_mask:
    # One kept word per output: a gather loop, then the epilogue (measured 1.10 us against
    # 1.28 for the per-word runs of popcount_rows_sorted, and 1.22 with the two loops fused).
    # With AVX-512 on <= 16 input words the words are picked by a permute (784-1024-1024-10
    # MLP, fc2 at one word per output: 0.82-0.84 us against 1.03-1.10 for the gather loop;
    # the epilogue folded into the permute loop measured no faster).
    if opts[O_SELECT16]:
      select16_counts(xw, idx, w, acc)
    else:
      i0, w0 = idx[0], w[0]
      for o in range(acc.shape[0]):
        acc[o] = popcount64(xw[i0[o]] ^ w0[o])
    for o in range(acc.shape[0]):
      y[o] = (kbits[o] - 2 * acc[o]) * scale[o] + bias[o]
  elif opts[O_SORTED]:  # outputs sorted by their first word, contiguous (see mlp_plan)
    popcount_rows_sorted(xw, w, m, idx, acc, has_mask, _span(ib, meta, base + B_SEG))
    for o in range(acc.shape[0]):
      y[o] = (kbits[o] - 2 * acc[o]) * scale[o] + bias[o]
  else:
    float_outputs(xw, w, m, idx, has_mask, has_idx, acc, kbits, scale, cols, bias, y, scatter)


@njit(cache=True, fastmath=True)
def clip_bn_dense(y, mult, add, z, kern_t, bout, orow):
  """``orow = clip(y * mult + add, -1, 1) @ kern + bout`` (``kern_t [C, H]``)."""
  for h in range(y.shape[0]):
    z[h] = min(1.0, max(-1.0, y[h] * mult[h] + add[h]))
  for c in range(orow.shape[0]):
    s = 0.0
    krow = kern_t[c]
    for h in range(z.shape[0]):
      s += z[h] * krow[h]
    orow[c] = s + bout[c]


@njit(cache=True)
def mlp_forward(x, B, n_layers, out, cycles):
  """The BNN MLP on rows ``x [N, R]`` float32 -> logits ``out [N, C]`` float64.

  ``B``: the flat buffers (:class:`Flat`) holding the first layer (:func:`first_layer`),
  ``n_layers`` binary-input layers (:func:`sign_layer`, the last :func:`float_layer`) and,
  when ``out`` is a float layer, ``clip(bn(.))`` + ``out`` (:func:`clip_bn_dense`).
  ``cycles`` (empty, or one slot per layer) accumulates time-stamp-counter ticks."""
  ub, ib, fb, sb, bb, i4, meta = B
  timed = cycles.shape[0] > 0
  lb = N_FIRST + N_BINARY * n_layers
  real_out = meta.shape[0] > lb
  for n in range(x.shape[0]):
    t0 = read_cycles() if timed else 0
    xw = first_layer(x[n], B)
    if timed:
      t1 = read_cycles()
      cycles[0] += t1 - t0
      t0 = t1
    for k in range(n_layers - 1):
      xw = sign_layer(xw, B, N_FIRST + N_BINARY * k)
      if timed:
        t1 = read_cycles()
        cycles[k + 1] += t1 - t0
        t0 = t1
    float_layer(xw, B, N_FIRST + N_BINARY * (n_layers - 1))
    if timed:
      t1 = read_cycles()
      cycles[n_layers] += t1 - t0
      t0 = t1
    y = _span(fb, meta, N_FIRST + N_BINARY * (n_layers - 1) + B_Y)
    if real_out:
      mult, add = _span(fb, meta, lb + L_MULT), _span(fb, meta, lb + L_ADD)
      kern_t, bout = _grid(fb, meta, lb + L_KERN_T), _span(fb, meta, lb + L_BOUT)
      clip_bn_dense(y, mult, add, _span(fb, meta, lb + L_Z), kern_t, bout, out[n])
      if timed:
        cycles[n_layers + 1] += read_cycles() - t0
    else:
      for c in range(out.shape[1]):
        out[n, c] = y[c]


@njit(cache=True)
def all_pixels(x, B):
  """Whether every row of ``x [N, R]`` is standardised 8-bit pixels (:func:`pixel_planes`)."""
  ub, ib, fb, sb, bb, i4, meta = B
  for n in range(x.shape[0]):
    total = pixel_planes(
      x[n],
      _span(fb, meta, F_MEAN),
      _span(fb, meta, F_STD),
      _span(sb, meta, F_MEANF),
      _span(sb, meta, F_STDF),
      _span(bb, meta, F_U8),
      _grid(ub, meta, F_PLANES),
      _span(ib, meta, F_USUM),
    )
    if total < 0:
      return False
  return True


# --------------------------------------------------------------------------- preparation


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


def _opts(*values) -> np.ndarray:
  return np.array([int(v) for v in values], np.int64)


def _flag_bytes(width: int) -> np.ndarray:
  return np.zeros(-(-width // words.WORD_BITS) * words.WORD_BITS, np.uint8)


def _add_first(flat: Flat, model, name: str, bn: str) -> None:
  from arsp_jax.export.compiled import gathered_words  # compiled imports this module

  f, p = model.fast[name], model.binary[name]
  eff = p["eff"]
  o_s, r = eff.shape
  width = f["bias"].shape[0]
  std_hdr = model.header.get("standardisation") or {}
  c_n = model.input_shape[-1]
  meanf = np.broadcast_to(np.asarray(std_hdr.get("mean", 0.0), np.float32), (c_n,))
  stdf = np.broadcast_to(np.asarray(std_hdr.get("std", 1.0), np.float32), (c_n,))
  pixels = bool(np.all(stdf == stdf[0]) and stdf[0] > 0 and r % c_n == 0)
  meanf, stdf = np.tile(meanf, r // c_n), np.tile(stdf, r // c_n)
  packed = (words.pack_taps(eff > 0), words.pack_taps(eff != 0), words.pack_taps(np.ones(r, bool)))
  g = gathered_words(*packed)  # gathered when few words are kept (a gather per plane word)
  has_mask, has_idx = g["flags"]
  whole = not gathered_words(*packed, max_fraction=1.0)["flags"][0]  # kept words are whole
  if has_idx:
    mode = 2 if has_mask else 1
  else:
    mode = (4 if whole else 3) if has_mask else 0
  n_w = -(-r // words.WORD_BITS)
  mult, add = (np.asarray(a, np.float64) for a in model.bn[bn])
  slots = [
    meanf.astype(np.float64),  # F_MEAN
    stdf.astype(np.float64),
    meanf,
    stdf,
    np.zeros(n_w * words.WORD_BITS, np.uint8),  # F_U8
    np.zeros((n_w, 8), np.uint64),  # F_PLANES
    np.zeros(n_w, np.int64),  # F_USUM
    g["w"] & g["m"],  # F_WP
    ~g["w"] & g["m"],  # F_WN
    g["idx"],
    eff.astype(np.float64) @ meanf.astype(np.float64),  # F_MOFF: W . mean
    np.array([float(stdf[0])]),  # F_SD
    f["pos"],
    f["neg"],
    f["gidx"],
    np.zeros((-(-r // 8), 256), np.float64),  # F_TABLE
    np.zeros(o_s, np.float64),  # F_ACCF
    np.zeros(o_s, np.int64),  # F_ACCI
    f["scale"],
    f["cols"],
    f["bias"],
    np.array(f["bias"], np.float64),  # F_Y: pruned channels output their bias
    mult,
    add,
    _flag_bytes(width),
    np.zeros(-(-width // words.WORD_BITS), np.uint64),  # F_WORDS
    _opts(pixels, mode, f["has_neg"]),
  ]
  for slot in slots:
    flat.add(slot)


def _add_binary(
  flat: Flat, model, name: str, bn: str | None, sortable: bool = False, select16: bool = False
):
  """Adds a binary-input layer's slots; returns (False, None) when its sign rule is not a
  threshold, else (True, perm): ``perm`` the order of its outputs when ``sortable`` (its
  float outputs feed only the float ``out`` layer, which is permuted to match) and it
  gathers: outputs sorted by their first kept word, so that entry reads one input word per
  run of outputs instead of a gather per output.  ``select16`` (AVX-512 only): a sorted
  layer with one kept word per output, on at most 16 input words, picks each output's word
  by a permute (:func:`select16_counts`)."""
  f, p = model.fast[name], model.binary[name]
  width = f["bias"].shape[0]
  o_s = f["scale"].shape[0]
  flags = _flag_bytes(width)
  lo = hi = np.zeros(o_s, np.int64)
  if bn is not None:
    mult, add = (np.asarray(a, np.float64) for a in model.bn[bn])
    kept = (p["eff"] != 0).sum(axis=1)
    nmax = int(np.max(np.abs(f["kbits"])) + 2 * np.max(kept)) + 1  # n = kbits - 2 pc
    c = f["cols"]
    rule = sign_thresholds(f["kbits"], f["scale"], f["bias"][c], mult[c], add[c], nmax)
    if rule is None:
      return False, None
    lo, hi = popcount_bounds(f["kbits"], *rule)
    if f["pruned_channels"]:  # the constant bits of the pruned channels
      flags[:width] = (f["bias"] * mult + add >= 0).astype(np.uint8)
  w, m, idx, kbits, scale, bias = f["w"], f["m"], f["idx"], f["kbits"], f["scale"], f["bias"]
  perm, seg = None, np.zeros(1, np.int64)
  if sortable and bn is None and f["flags"][1] and not f["pruned_channels"]:
    perm = np.argsort(idx[0], kind="stable")
    w, m, idx = w[:, perm], m[:, perm], idx[:, perm]
    kbits, scale, bias = kbits[perm], scale[perm], bias[perm]
    seg = np.searchsorted(idx[0], np.arange(int(idx[0].max()) + 2)).astype(np.int64)
  n_in = -(-p["eff"].shape[1] // words.WORD_BITS)
  one_word = perm is not None and w.shape[0] == 1 and not f["flags"][0]
  select16 = select16 and one_word and n_in <= 16
  slots = [
    w,
    m,
    idx,
    np.asarray(kbits, np.int32),
    scale,
    f["cols"],
    bias,
    lo,
    hi,
    np.zeros(o_s, np.int32),  # B_ACC
    flags,
    np.zeros(-(-width // words.WORD_BITS), np.uint64),  # B_WORDS
    np.array(bias, np.float64),  # B_Y
    _opts(*f["flags"], f["pruned_channels"], bn is None, perm is not None, select16),
    seg,  # B_SEG
  ]
  for slot in slots:
    flat.add(slot)
  return True, perm


def float_out_arrays(real: dict) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of a float Dense ``out`` layer in float64, the bias including the constant
  of inputs dropped by channel pruning (``input_const``)."""
  kern = np.asarray(real["kernel"], np.float64)
  bout = np.zeros(kern.shape[1])
  for extra in ("bias", "input_const"):
    if extra in real:
      bout = bout + np.asarray(real[extra], np.float64)
  return kern, bout


def mlp_plan(model, dense: list, bns: list, select16: bool = False) -> dict | None:
  """The buffers of :func:`mlp_forward` for a chain of dense layers ``dense`` (a real-input
  binary first layer, binary-input hidden layers, a float or binary last layer) with the
  batchnorms ``bns`` between them, run by ``CompiledModel``; None when the layers do not fit
  the fused pass (then the per-layer plan runs); ``select16``: see :func:`_add_binary`."""
  spec, fast = model.spec, model.fast
  hidden, last = dense[:-1], dense[-1]
  out = spec[last]
  binary_out = out.get("type") == "BinaryDense" and out.get("binary_inputs")
  pop = hidden[1:] + ([last] if binary_out else [])
  if not pop or fast.get(hidden[0]) is None or "pos" not in fast[hidden[0]]:
    return None
  if any(fast.get(n) is None or "w" not in fast[n] for n in pop):
    return None
  if not binary_out and out.get("type") != "Dense":
    return None
  flat = Flat()
  _add_first(flat, model, hidden[0], bns[0])
  perm = None
  for i, name in enumerate(pop):
    sign_next = i + 1 < len(pop)  # else: float output (clip + float out, or the logits)
    bn = bns[i + 1] if sign_next else None
    ok, perm = _add_binary(flat, model, name, bn, not binary_out, select16 and not sign_next)
    if not ok:
      return None
  if binary_out:
    n_out = fast[last]["bias"].shape[0]
  else:
    kern, bout = float_out_arrays(model.real[last])
    mult, add = (np.asarray(a, np.float64) for a in model.bn[bns[-1]])
    if perm is not None:  # the last binary layer's outputs are sorted
      mult, add, kern = mult[perm], add[perm], kern[perm]
    for slot in (mult, add, kern.T, bout, np.zeros(kern.shape[0]), _opts(1)):
      flat.add(slot)
    n_out = kern.shape[1]
  names = [hidden[0], *pop] + ([] if binary_out else [last])
  bufs = flat.finish()
  last_opts = _span(bufs[1], bufs[-1], N_FIRST + N_BINARY * (len(pop) - 1) + B_OPTS)
  return {
    "buffers": bufs,
    "n_layers": len(pop),
    "n_out": n_out,
    "names": names,
    "sorted_last": perm is not None,
    "select16": bool(last_opts[O_SELECT16]),
  }


# --------------------------------------------------------------------------- cnn_small


@njit(cache=True, inline="always")
def dot9(w, m, o, x0, x1, x2, x3, x4, x5, x6, x7, x8, has_mask):
  """``sum_f popcount((x_f XOR w[f, o]) [AND m[f, o]])`` over 9 patch words."""
  if has_mask:
    return (
      popcount64((x0 ^ w[0, o]) & m[0, o])
      + popcount64((x1 ^ w[1, o]) & m[1, o])
      + popcount64((x2 ^ w[2, o]) & m[2, o])
      + popcount64((x3 ^ w[3, o]) & m[3, o])
      + popcount64((x4 ^ w[4, o]) & m[4, o])
      + popcount64((x5 ^ w[5, o]) & m[5, o])
      + popcount64((x6 ^ w[6, o]) & m[6, o])
      + popcount64((x7 ^ w[7, o]) & m[7, o])
      + popcount64((x8 ^ w[8, o]) & m[8, o])
    )
  return (
    popcount64(x0 ^ w[0, o])
    + popcount64(x1 ^ w[1, o])
    + popcount64(x2 ^ w[2, o])
    + popcount64(x3 ^ w[3, o])
    + popcount64(x4 ^ w[4, o])
    + popcount64(x5 ^ w[5, o])
    + popcount64(x6 ^ w[6, o])
    + popcount64(x7 ^ w[7, o])
    + popcount64(x8 ^ w[8, o])
  )


@njit(cache=True, inline="always")
def dot5(w, m, o, x0, x1, x2, x3, x4, has_mask):
  """:func:`dot9` over 5 words (a 3x3 patch of up to 32 channels, two taps per word)."""
  if has_mask:
    return (
      popcount64((x0 ^ w[0, o]) & m[0, o])
      + popcount64((x1 ^ w[1, o]) & m[1, o])
      + popcount64((x2 ^ w[2, o]) & m[2, o])
      + popcount64((x3 ^ w[3, o]) & m[3, o])
      + popcount64((x4 ^ w[4, o]) & m[4, o])
    )
  return (
    popcount64(x0 ^ w[0, o])
    + popcount64(x1 ^ w[1, o])
    + popcount64(x2 ^ w[2, o])
    + popcount64(x3 ^ w[3, o])
    + popcount64(x4 ^ w[4, o])
  )


@njit(cache=True, inline="always")
def sel5(k, x0, x1, x2, x3, x4):
  """Word ``k`` (uint64) of 5 (selects, which LLVM vectorises over the outputs)."""
  a = x0 if k == np.uint64(0) else x1
  b = x2 if k == np.uint64(2) else x3
  c = a if k < np.uint64(2) else b
  return c if k < np.uint64(4) else x4


def host_has_avx512() -> bool:
  """Whether numba compiles for this CPU with AVX-512F (the host's features, no override of
  numba's target CPU): the window path of :func:`bconv_sign_pool_range` (``opts[8]``,
  :func:`window_bits8`) is enabled, and its intrinsics compiled, only then."""
  from numba.core import config

  if config.CPU_NAME or config.CPU_FEATURES:
    return False
  try:
    import llvmlite.binding as ll

    return bool(ll.get_host_cpu_features().get("avx512f", False))
  except Exception:
    return False


AVX512 = host_has_avx512()


@intrinsic
def _rows4_avx512(typingctx, xf, base, stride):
  """The 4 words at ``xf[base + r * stride]`` for rows ``r`` = 0..3 (16 uint64): a pooling
  window's 3x3 patches (stride 1, one word per pixel) lie in these 4 x 4 words."""
  sig = types.UniTuple(types.uint64, 16)(xf, base, stride)

  def codegen(context, builder, signature, args):
    xa, b, st = args
    i64 = ir.IntType(64)
    v4 = ir.VectorType(i64, 4)
    data = context.make_array(signature.args[0])(context, builder, xa).data
    tup = context.get_constant_undef(signature.return_type)
    for r in range(4):
      off = builder.add(b, builder.mul(st, ir.Constant(i64, r)))
      v = builder.load(builder.bitcast(builder.gep(data, [off]), v4.as_pointer()), align=8)
      for c in range(4):
        tup = builder.insert_value(tup, builder.extract_element(v, ir.Constant(i64, c)), 4 * r + c)
    return tup

  return sig, codegen


@intrinsic
def _window_bits8_avx512(typingctx, k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
  """The byte of the pooled bits of outputs ``o .. o + 7`` (bit j: output ``o + j``) of a
  window whose 4 x 4 words are ``tab`` (:func:`_rows4_avx512`): each output's word of pixel
  (0, 0) is ``tab[k[o + j]]`` (``k = 4 row + col`` of its tap), of pixels (0, 1), (1, 0),
  (1, 1) ``tab[k + 1]``, ``tab[k + 4]``, ``tab[k + 5]``: one two-table permute per pixel
  (``vpermi2q``), ``vpopcntq``, then ``n = kbz[rows[r], o + j] - 2 popcount`` and
  :func:`pool_bit32` in int32 vectors (``kbz`` int32 ``[., o_s]`` C-contiguous, ``nlo``,
  ``nhi`` int32, ``um`` uint8; ``k``, ``w``, ``m``: row 0 of uint64 arrays)."""
  sig = types.uint8(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab)

  def codegen(context, builder, signature, args):
    ka, wa, ma, kba, rws, uma, loa, hia, oo, os_, tv = args
    aty = signature.args
    i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
    v8, v8i32, v8i8 = ir.VectorType(i64, 8), ir.VectorType(i32, 8), ir.VectorType(i8, 8)
    mod = builder.module

    def vload(ty, val, off, vt):
      data = context.make_array(ty)(context, builder, val).data
      return builder.load(builder.bitcast(builder.gep(data, [off]), vt.as_pointer()), align=1)

    def decl(name, fnty):
      return mod.globals.get(name) or ir.Function(mod, fnty, name)

    kv, wv, mv = (vload(aty[i], a, oo, v8) for i, a in ((0, ka), (1, wa), (2, ma)))
    ctpop = decl("llvm.ctpop.v8i64", ir.FunctionType(v8, [v8]))
    perm = decl("llvm.x86.avx512.vpermi2var.q.512", ir.FunctionType(v8, [v8, v8, v8]))
    tabs = [ir.Constant(v8, ir.Undefined), ir.Constant(v8, ir.Undefined)]
    for f in range(16):
      x = builder.extract_value(tv, f)
      tabs[f // 8] = builder.insert_element(tabs[f // 8], x, ir.Constant(i64, f % 8))
    ns = []
    for r, d in enumerate((0, 1, 4, 5)):
      idx = builder.add(kv, ir.Constant(v8, [d] * 8)) if d else kv
      sel = builder.call(perm, [tabs[0], idx, tabs[1]])
      pc = builder.trunc(builder.call(ctpop, [builder.and_(builder.xor(sel, wv), mv)]), v8i32)
      row = builder.extract_value(rws, r)
      kb = vload(aty[3], kba, builder.add(builder.mul(row, os_), oo), v8i32)
      ns.append(builder.sub(kb, builder.shl(pc, ir.Constant(v8i32, [1] * 8))))

    def vmax(a, b):
      return builder.select(builder.icmp_signed(">", a, b), a, b)

    def vmin(a, b):
      return builder.select(builder.icmp_signed("<", a, b), a, b)

    mx = vmax(vmax(ns[0], ns[1]), vmax(ns[2], ns[3]))
    mn = vmin(vmin(ns[0], ns[1]), vmin(ns[2], ns[3]))
    use_max = builder.icmp_unsigned("!=", vload(aty[5], uma, oo, v8i8), ir.Constant(v8i8, None))
    v = builder.select(use_max, mx, mn)
    lo = builder.icmp_signed(">=", v, vload(aty[6], loa, oo, v8i32))
    hi = builder.icmp_signed("<=", v, vload(aty[7], hia, oo, v8i32))
    return builder.bitcast(builder.and_(lo, hi), i8)

  return sig, codegen


def window_rows(xf, base, stride):
  """See :func:`_rows4_avx512` (scalar loads on CPUs without AVX-512F)."""
  raise NotImplementedError


@overload(window_rows, inline="always")
def _window_rows_impl(xf, base, stride):
  if AVX512:
    return lambda xf, base, stride: _rows4_avx512(xf, base, stride)

  def scalar(xf, base, stride):
    b0, b1, b2, b3 = base, base + stride, base + 2 * stride, base + 3 * stride
    return (
      *(xf[b0], xf[b0 + 1], xf[b0 + 2], xf[b0 + 3]),
      *(xf[b1], xf[b1 + 1], xf[b1 + 2], xf[b1 + 3]),
      *(xf[b2], xf[b2 + 1], xf[b2 + 2], xf[b2 + 3]),
      *(xf[b3], xf[b3 + 1], xf[b3 + 2], xf[b3 + 3]),
    )

  return scalar


def window_bits8(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
  """See :func:`_window_bits8_avx512` (a scalar loop on CPUs without AVX-512F)."""
  raise NotImplementedError


@overload(window_bits8, inline="always")
def _window_bits8_impl(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
  if AVX512:

    def impl(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
      return _window_bits8_avx512(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab)

    return impl

  def scalar(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
    byte = np.uint8(0)
    for j in range(8):
      kj, wj, mj = np.int64(k[0, o + j]), w[0, o + j], m[0, o + j]
      na = kbz[rows[0], o + j] - 2 * popcount64((tab[kj] ^ wj) & mj)
      nb = kbz[rows[1], o + j] - 2 * popcount64((tab[kj + 1] ^ wj) & mj)
      nc = kbz[rows[2], o + j] - 2 * popcount64((tab[kj + 4] ^ wj) & mj)
      nd = kbz[rows[3], o + j] - 2 * popcount64((tab[kj + 5] ^ wj) & mj)
      byte |= pool_bit32(na, nb, nc, nd, um[o + j], nlo[o + j], nhi[o + j]) << np.uint8(j)
    return byte

  return scalar


@intrinsic
def _select16_avx512(typingctx, xw, idx, w, acc):
  """``acc[o] = popcount(xw[idx[0, o]] XOR w[0, o])`` for ``o < 8 (O // 8)`` (``acc`` int32
  ``[O]``, ``idx`` int64 and ``w`` uint64 ``[1, O]`` C-contiguous, ``idx < 16``): the <= 16
  words of ``xw`` (missing ones zero) held in two zmm registers, each output's word picked by
  a two-table permute (``vpermt2q``), 8 outputs per instruction, then ``vpopcntq``."""
  sig = types.void(xw, idx, w, acc)

  def codegen(context, builder, signature, args):
    xa, ia, wa, aa = args
    aty = signature.args
    i64, i32 = ir.IntType(64), ir.IntType(32)
    v8, v8i32 = ir.VectorType(i64, 8), ir.VectorType(i32, 8)
    mod = builder.module

    def decl(name, fnty):
      return mod.globals.get(name) or ir.Function(mod, fnty, name)

    ctpop = decl("llvm.ctpop.v8i64", ir.FunctionType(v8, [v8]))
    perm = decl("llvm.x86.avx512.vpermi2var.q.512", ir.FunctionType(v8, [v8, v8, v8]))
    xarr = context.make_array(aty[0])(context, builder, xa)
    n_in = builder.extract_value(xarr.shape, 0)
    xdata = xarr.data
    tabs = [ir.Constant(v8, [0] * 8), ir.Constant(v8, [0] * 8)]
    last = builder.sub(n_in, ir.Constant(i64, 1))
    for f in range(16):
      fc = ir.Constant(i64, f)
      inside = builder.icmp_signed("<", fc, n_in)
      x = builder.load(builder.gep(xdata, [builder.select(inside, fc, last)]))
      x = builder.select(inside, x, ir.Constant(i64, 0))
      tabs[f // 8] = builder.insert_element(tabs[f // 8], x, ir.Constant(i64, f % 8))
    idata = context.make_array(aty[1])(context, builder, ia).data
    wdata = context.make_array(aty[2])(context, builder, wa).data
    aarr = context.make_array(aty[3])(context, builder, aa)
    adata = aarr.data
    n8 = builder.sdiv(builder.extract_value(aarr.shape, 0), ir.Constant(i64, 8))
    with cgutils.for_range(builder, n8) as loop:
      o = builder.mul(loop.index, ir.Constant(i64, 8))

      def vload(data, vt):
        return builder.load(builder.bitcast(builder.gep(data, [o]), vt.as_pointer()), align=1)

      sel = builder.call(perm, [tabs[0], vload(idata, v8), tabs[1]])
      pc = builder.trunc(builder.call(ctpop, [builder.xor(sel, vload(wdata, v8))]), v8i32)
      builder.store(pc, builder.bitcast(builder.gep(adata, [o]), v8i32.as_pointer()), align=1)
    return context.get_dummy_value()

  return sig, codegen


def select16_counts(xw, idx, w, acc):
  """``acc[o] = popcount(xw[idx[0, o]] XOR w[0, o])``: :func:`_select16_avx512` on 8
  outputs at a time and a scalar tail (a scalar gather on CPUs without AVX-512F)."""
  raise NotImplementedError


@overload(select16_counts, inline="always")
def _select16_counts_impl(xw, idx, w, acc):
  if AVX512:

    def impl(xw, idx, w, acc):
      _select16_avx512(xw, idx, w, acc)
      for o in range(acc.shape[0] // 8 * 8, acc.shape[0]):
        acc[o] = popcount64(xw[idx[0, o]] ^ w[0, o])

    return impl

  def scalar(xw, idx, w, acc):
    for o in range(acc.shape[0]):
      acc[o] = popcount64(xw[idx[0, o]] ^ w[0, o])

  return scalar


@njit(cache=True, inline="always")
def pool_bit32(na, nb, nc, nd, um, nlo, nhi):
  """The bit of ``sign(bn(max_pool2(.)))`` from the window's 4 integers ``n``: one pixel's bit
  is ``s * n >= t``, taken in int32 as the bounds ``nlo <= n <= nhi`` (:func:`sign_bounds`: no
  multiply, so that LLVM vectorises it over the outputs); the OR of the window's bits is that of
  the window's extreme ``n`` in the rule's direction (``um``: ``max(n)``, else ``min(n)``)."""
  na, nb, nc, nd = np.int32(na), np.int32(nb), np.int32(nc), np.int32(nd)
  mx = max(max(na, nb), max(nc, nd))
  mn = min(min(na, nb), min(nc, nd))
  v = mx if um != 0 else mn
  return np.uint8((v >= nlo) & (v <= nhi))


@njit(cache=True)
def bconv_sign_pool_range(
  xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi
):
  """Rows ``lo:hi`` (batch x pooled row) of ``sign(bn(max_pool2(conv(x))))`` packed, for a
  binary-input convolution (inputs and weights as in :func:`kernels.bconv_range`).

  Per output pixel the integer ``n = kbz[krow[p], o] - 2 popcount`` (``kbz``: the kept bits
  plus the padding correction, one row per border position and a last row without; int32)
  gives the bit ``s * n >= t`` (the float epilogue + batchnorm + sign, tabulated), taken as
  ``nlo <= n <= nhi`` in int32 (:func:`sign_bounds`, :func:`pool_bit32`); the max pool of
  the float outputs is the OR of the window's bits where ``mult >= 0`` and the AND elsewhere
  (every step is monotone), taken on the integers.  The 4 pixels of a
  pooling window are computed together, vectorised over the output channels: each weight
  word is loaded once per window; 9-word patches (a 3x3 kernel on up to 64 channels) run
  with the patch words in registers (:func:`dot9`), others accumulate word by word.  The
  bits are packed 8 per multiply (pruned channels, ``opts[2]``: scattered among the constant bits
  in ``const``).  With ``opts[8]`` (AVX-512 only: a 3x3 stride-1 kernel on one word per pixel,
  one kept word per output, ``goff[0]`` its index ``4 row + col`` among the window's 4 x 4
  input words) each output's word is picked by a permute, 8 outputs per byte of bits
  (:func:`window_bits8`).  With ``opts[6]`` (a 3x3 kernel on up to 32 input channels, words in place)
  two taps share a word (``w_t``/``m_t [5, O]``: taps 2k and 2k + 1 in the low and high 32
  bits of word k; the patch's words are paired likewise): 5 popcounts per output instead of
  9.  ``out [B, Ho // 2, Wo // 2, Cw]`` uint64; ``opts = (has_mask, has_idx, scatter, Wo, sh,
  sw, pairs, one, window)`` (``one``: ``opts[7]``, a paired patch keeping one word per output,
  picked by :func:`sel5`; ``window``: ``opts[8]``, above); the patch is read in place: word ``f`` of the pixel at word
  ``base`` is ``xf[base + foff[f]]`` (``xf[base + goff[f, o]]`` when gathered: ``goff``
  uint64, so that numba reads it without a negative-index check).  No array view is made
  inside the pixel loop (a view costs its reference counting: measured 20 of 62 us for
  conv2 of cnn_small in the word format)."""
  sh, sw, wo = opts[4], opts[5], opts[3]
  cw, hin, win = xbp.shape[3], xbp.shape[1], xbp.shape[2]
  xf = xbp.reshape(-1)
  hp, wp = out.shape[1], out.shape[2]
  o_s, n_f = w_t.shape[1], w_t.shape[0]
  has_mask, has_idx, scatter = opts[0] != 0, opts[1] != 0, opts[2] != 0
  flags = const.copy()
  fl = np.zeros(64 * out.shape[3], np.uint8)  # the bits past o_s stay 0
  flw = fl.view(np.uint64)
  acc = np.zeros((4, o_s), np.int64)
  # one word per output of a paired 5-word patch (opts[7]): w_t, m_t [1, O], the index in goff[0]
  one = opts.shape[0] > 7 and opts[7] != 0
  # 3x3, stride 1, one word per pixel, one kept word per output (opts[8], AVX-512 only): the
  # window's 4 x 4 input words in two vectors, each output's word picked by a permute
  # (window_bits8), 8 outputs' pooled bits as one byte
  window = opts.shape[0] > 8 and opts[8] != 0
  flb = np.zeros(8 * out.shape[3], np.uint8)  # the bytes past o_s // 8 stay 0
  flb64 = flb.view(np.uint64)
  pairs = opts[6] != 0  # 5 words: taps (0, 1), (2, 3), (4, 5), (6, 7), 8 of 32 bits each
  nine = (n_f == 9 or pairs or one) and not has_idx
  q = foff if nine else np.zeros(9, np.int64)
  hi32 = np.uint64(32)
  f0, f1, f2, f3, f4, f5, f6, f7, f8 = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8]
  for row in range(lo, hi):
    b, i = row // hp, row % hp
    for j in range(wp):
      oh, ow = 2 * i, 2 * j
      ba = ((b * hin + oh * sh) * win + ow * sw) * cw
      bb = ba + sw * cw
      bc = ba + sh * win * cw
      bd = bc + sw * cw
      p = oh * wo + ow
      ra, rb, rc, rd = krow[p], krow[p + 1], krow[p + wo], krow[p + wo + 1]
      if window:
        tab = window_rows(xf, ba, win)
        rws = (ra, rb, rc, rd)
        for o in range(0, o_s, 8):
          flb[o >> 3] = window_bits8(goff, w_t, m_t, kbz, rws, um, nlo, nhi, o, o_s, tab)
      elif nine:
        xa0, xa1, xa2 = xf[ba + f0], xf[ba + f1], xf[ba + f2]
        xa3, xa4, xa5 = xf[ba + f3], xf[ba + f4], xf[ba + f5]
        xa6, xa7, xa8 = xf[ba + f6], xf[ba + f7], xf[ba + f8]
        xb0, xb1, xb2 = xf[bb + f0], xf[bb + f1], xf[bb + f2]
        xb3, xb4, xb5 = xf[bb + f3], xf[bb + f4], xf[bb + f5]
        xb6, xb7, xb8 = xf[bb + f6], xf[bb + f7], xf[bb + f8]
        xc0, xc1, xc2 = xf[bc + f0], xf[bc + f1], xf[bc + f2]
        xc3, xc4, xc5 = xf[bc + f3], xf[bc + f4], xf[bc + f5]
        xc6, xc7, xc8 = xf[bc + f6], xf[bc + f7], xf[bc + f8]
        xd0, xd1, xd2 = xf[bd + f0], xf[bd + f1], xf[bd + f2]
        xd3, xd4, xd5 = xf[bd + f3], xf[bd + f4], xf[bd + f5]
        xd6, xd7, xd8 = xf[bd + f6], xf[bd + f7], xf[bd + f8]
        if pairs:
          xa0, xa1, xa2, xa3 = (
            xa0 | (xa1 << hi32),
            xa2 | (xa3 << hi32),
            xa4 | (xa5 << hi32),
            xa6 | (xa7 << hi32),
          )
          xb0, xb1, xb2, xb3 = (
            xb0 | (xb1 << hi32),
            xb2 | (xb3 << hi32),
            xb4 | (xb5 << hi32),
            xb6 | (xb7 << hi32),
          )
          xc0, xc1, xc2, xc3 = (
            xc0 | (xc1 << hi32),
            xc2 | (xc3 << hi32),
            xc4 | (xc5 << hi32),
            xc6 | (xc7 << hi32),
          )
          xd0, xd1, xd2, xd3 = (
            xd0 | (xd1 << hi32),
            xd2 | (xd3 << hi32),
            xd4 | (xd5 << hi32),
            xd6 | (xd7 << hi32),
          )
          if one:
            for o in range(o_s):
              k, wv, mv = goff[0, o], w_t[0, o], m_t[0, o]
              pa = popcount64((sel5(k, xa0, xa1, xa2, xa3, xa8) ^ wv) & mv)
              pb = popcount64((sel5(k, xb0, xb1, xb2, xb3, xb8) ^ wv) & mv)
              pc = popcount64((sel5(k, xc0, xc1, xc2, xc3, xc8) ^ wv) & mv)
              pd = popcount64((sel5(k, xd0, xd1, xd2, xd3, xd8) ^ wv) & mv)
              na, nb = kbz[ra, o] - 2 * pa, kbz[rb, o] - 2 * pb
              nc, nd = kbz[rc, o] - 2 * pc, kbz[rd, o] - 2 * pd
              fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
          elif has_mask:
            for o in range(o_s):
              na = kbz[ra, o] - 2 * dot5(w_t, m_t, o, xa0, xa1, xa2, xa3, xa8, True)
              nb = kbz[rb, o] - 2 * dot5(w_t, m_t, o, xb0, xb1, xb2, xb3, xb8, True)
              nc = kbz[rc, o] - 2 * dot5(w_t, m_t, o, xc0, xc1, xc2, xc3, xc8, True)
              nd = kbz[rd, o] - 2 * dot5(w_t, m_t, o, xd0, xd1, xd2, xd3, xd8, True)
              fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
          else:
            for o in range(o_s):
              na = kbz[ra, o] - 2 * dot5(w_t, m_t, o, xa0, xa1, xa2, xa3, xa8, False)
              nb = kbz[rb, o] - 2 * dot5(w_t, m_t, o, xb0, xb1, xb2, xb3, xb8, False)
              nc = kbz[rc, o] - 2 * dot5(w_t, m_t, o, xc0, xc1, xc2, xc3, xc8, False)
              nd = kbz[rd, o] - 2 * dot5(w_t, m_t, o, xd0, xd1, xd2, xd3, xd8, False)
              fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
        elif has_mask:
          for o in range(o_s):
            na = kbz[ra, o] - 2 * dot9(
              w_t, m_t, o, xa0, xa1, xa2, xa3, xa4, xa5, xa6, xa7, xa8, True
            )
            nb = kbz[rb, o] - 2 * dot9(
              w_t, m_t, o, xb0, xb1, xb2, xb3, xb4, xb5, xb6, xb7, xb8, True
            )
            nc = kbz[rc, o] - 2 * dot9(
              w_t, m_t, o, xc0, xc1, xc2, xc3, xc4, xc5, xc6, xc7, xc8, True
            )
            nd = kbz[rd, o] - 2 * dot9(
              w_t, m_t, o, xd0, xd1, xd2, xd3, xd4, xd5, xd6, xd7, xd8, True
            )
            fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
        else:
          for o in range(o_s):
            na = kbz[ra, o] - 2 * dot9(
              w_t, m_t, o, xa0, xa1, xa2, xa3, xa4, xa5, xa6, xa7, xa8, False
            )
            nb = kbz[rb, o] - 2 * dot9(
              w_t, m_t, o, xb0, xb1, xb2, xb3, xb4, xb5, xb6, xb7, xb8, False
            )
            nc = kbz[rc, o] - 2 * dot9(
              w_t, m_t, o, xc0, xc1, xc2, xc3, xc4, xc5, xc6, xc7, xc8, False
            )
            nd = kbz[rd, o] - 2 * dot9(
              w_t, m_t, o, xd0, xd1, xd2, xd3, xd4, xd5, xd6, xd7, xd8, False
            )
            fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
      else:
        ua, ub, uc, ud = np.uint64(ba), np.uint64(bb), np.uint64(bc), np.uint64(bd)
        if has_idx and n_f == 1 and not has_mask:  # one word per output: no accumulators
          for o in range(o_s):
            g, wv = goff[0, o], w_t[0, o]
            na = kbz[ra, o] - 2 * popcount64(xf[ua + g] ^ wv)
            nb = kbz[rb, o] - 2 * popcount64(xf[ub + g] ^ wv)
            nc = kbz[rc, o] - 2 * popcount64(xf[uc + g] ^ wv)
            nd = kbz[rd, o] - 2 * popcount64(xf[ud + g] ^ wv)
            fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
        else:
          for f in range(n_f):
            if has_idx:
              if has_mask:
                for o in range(o_s):
                  g, wv, mv = goff[f, o], w_t[f, o], m_t[f, o]
                  acc[0, o] += popcount64((xf[ua + g] ^ wv) & mv)
                  acc[1, o] += popcount64((xf[ub + g] ^ wv) & mv)
                  acc[2, o] += popcount64((xf[uc + g] ^ wv) & mv)
                  acc[3, o] += popcount64((xf[ud + g] ^ wv) & mv)
              else:
                for o in range(o_s):
                  g, wv = goff[f, o], w_t[f, o]
                  acc[0, o] += popcount64(xf[ua + g] ^ wv)
                  acc[1, o] += popcount64(xf[ub + g] ^ wv)
                  acc[2, o] += popcount64(xf[uc + g] ^ wv)
                  acc[3, o] += popcount64(xf[ud + g] ^ wv)
            else:
              qf = foff[f]
              xa, xb, xc, xd = xf[ba + qf], xf[bb + qf], xf[bc + qf], xf[bd + qf]
              if has_mask:
                for o in range(o_s):
                  wv, mv = w_t[f, o], m_t[f, o]
                  acc[0, o] += popcount64((xa ^ wv) & mv)
                  acc[1, o] += popcount64((xb ^ wv) & mv)
                  acc[2, o] += popcount64((xc ^ wv) & mv)
                  acc[3, o] += popcount64((xd ^ wv) & mv)
              else:
                for o in range(o_s):
                  wv = w_t[f, o]
                  acc[0, o] += popcount64(xa ^ wv)
                  acc[1, o] += popcount64(xb ^ wv)
                  acc[2, o] += popcount64(xc ^ wv)
                  acc[3, o] += popcount64(xd ^ wv)
          for o in range(o_s):
            na, nb = kbz[ra, o] - 2 * acc[0, o], kbz[rb, o] - 2 * acc[1, o]
            nc, nd = kbz[rc, o] - 2 * acc[2, o], kbz[rd, o] - 2 * acc[3, o]
            acc[0, o] = 0
            acc[1, o] = 0
            acc[2, o] = 0
            acc[3, o] = 0
            fl[o] = pool_bit32(na, nb, nc, nd, um[o], nlo[o], nhi[o])
      if window:
        for w in range(out.shape[3]):
          out[b, i, j, w] = flb64[w]
      elif scatter:
        for o in range(o_s):
          flags[cols[o]] = fl[o]
        pack_flags(flags, out[b, i, j])
      else:
        for w in range(out.shape[3]):
          word = np.uint64(0)
          for q in range(8):
            word |= ((flw[8 * w + q] * PACK_MUL) >> np.uint64(56)) << np.uint64(8 * q)
          out[b, i, j, w] = word


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


# cnn_small's geometry for :func:`cnn_small_forward` (int64 array slots)
G_KH, G_KW, G_SH, G_SW = range(4)  # conv1's kernel and strides (rconv_bn_sign_pack's geom)
G_PT1, G_PL1, G_HP1, G_WP1 = range(4, 8)  # conv1's padding, padded input
G_PT2, G_PL2, G_HP2, G_WP2, G_CW2 = range(8, 13)  # conv2's padding, padded packed input
G_HO1, G_WO1, G_PT3, G_PL3, G_HP3, G_WP3, G_CW3 = range(13, 20)  # conv3's
G_HQ2, G_WQ2, G_HQ3, G_WQ3, G_CW4 = range(20, 25)  # pooled outputs of conv2, conv3
N_GEO = 25


# cnn_small_forward's slots in its flat buffers (:class:`Flat`): conv1 (w, bias, mult, add),
# conv2 and conv3 (the 12 arrays of bconv_sign_pool_range), fc4 (the 8 of bdense_range, its
# flags an int array), the tail (mult, add, kern_t, bout), the geometry
S_C1, S_C2, S_C3, S_D4, S_TAIL, S_GEO = 0, 4, 16, 28, 36, 40


@njit(cache=True, inline="always")
def _conv_slots(B, k):
  """The arrays of :func:`bconv_sign_pool_range` from slot ``k`` on."""
  ub, ib, fb, sb, bb, i4, meta = B
  return (
    _grid(ub, meta, k),
    _grid(ub, meta, k + 1),
    _span(ib, meta, k + 2),
    _grid(ub, meta, k + 3),
    _grid(i4, meta, k + 4),
    _span(ib, meta, k + 5),
    _span(i4, meta, k + 6),
    _span(i4, meta, k + 7),
    _span(bb, meta, k + 8),
    _span(bb, meta, k + 9),
    _span(ib, meta, k + 10),
    _span(ib, meta, k + 11),
  )


@njit(cache=True)
def cnn_small_forward(x, B, out, cycles):
  """The BNN ``cnn_small`` on images ``x [B, H, W, C]`` -> logits ``out [B, classes]`` in
  one call (no Python between the layers, no array made outside): conv1 + bn1 + sign + pack
  (:func:`rconv_bn_sign_pack`) into conv2's zero-padded packed input, conv2 and conv3 with
  their max pool + batchnorm + sign (:func:`bconv_sign_pool_range`), the first into conv3's
  padded input, fc4's float outputs (:func:`kernels.bdense_range`) and
  ``out(clip(bn4(.)))`` (:func:`clip_bn_dense`): the same kernels, so the same values, as
  the per-layer path.  The arrays are in the flat buffers ``B`` (slots ``S_*``; 7 arrays to
  unbox per call instead of 41: measured 4.4 us for the 41 as tuples); ``cycles`` (empty,
  or 5 slots) accumulates time-stamp-counter ticks per layer."""
  ub, ib, fb, sb, bb, i4, meta = B
  geo = _span(ib, meta, S_GEO)
  w1, b1 = _grid(fb, meta, S_C1), _span(fb, meta, S_C1 + 1)
  mult1, add1 = _span(fb, meta, S_C1 + 2), _span(fb, meta, S_C1 + 3)
  c2, c3 = _conv_slots(B, S_C2), _conv_slots(B, S_C3)
  w4, m4, idx4 = _grid(ub, meta, S_D4), _grid(ub, meta, S_D4 + 1), _grid(ib, meta, S_D4 + 2)
  kbits4, scale4 = _span(ib, meta, S_D4 + 3), _span(fb, meta, S_D4 + 4)
  cols4, bias4, flags4 = (
    _span(ib, meta, S_D4 + 5),
    _span(fb, meta, S_D4 + 6),
    _span(ib, meta, S_D4 + 7),
  )
  mult4, add4 = _span(fb, meta, S_TAIL), _span(fb, meta, S_TAIL + 1)
  kern_t, bout = _grid(fb, meta, S_TAIL + 2), _span(fb, meta, S_TAIL + 3)
  nb = x.shape[0]
  timed = cycles.shape[0] > 0
  t0 = read_cycles() if timed else 0
  xp = np.zeros((nb, geo[G_HP1], geo[G_WP1], x.shape[3]))
  pt, pl = geo[G_PT1], geo[G_PL1]
  for b in range(nb):
    for i in range(x.shape[1]):
      for j in range(x.shape[2]):
        for c in range(x.shape[3]):
          xp[b, pt + i, pl + j, c] = x[b, i, j, c]
  ho1, wo1 = geo[G_HO1], geo[G_WO1]
  x2 = np.zeros((nb, geo[G_HP2], geo[G_WP2], geo[G_CW2]), np.uint64)
  pt, pl = geo[G_PT2], geo[G_PL2]
  n_px = 0 if geo[G_KH] * geo[G_KW] == 9 and x.shape[3] == 1 else ho1 * wo1  # K = 9: no y
  pt_buf, y1 = np.empty((w1.shape[0], n_px)), np.empty((w1.shape[1], n_px))
  rconv_bn_sign_pack(xp, w1, b1, mult1, add1, x2[:, pt : pt + ho1, pl : pl + wo1], pt_buf, y1, geo)
  if timed:
    t1 = read_cycles()
    cycles[0] += t1 - t0
    t0 = t1
  hq, wq = geo[G_HQ2], geo[G_WQ2]
  x3 = np.zeros((nb, geo[G_HP3], geo[G_WP3], geo[G_CW3]), np.uint64)
  pt, pl = geo[G_PT3], geo[G_PL3]
  bconv_sign_pool_range(x2, *c2, x3[:, pt : pt + hq, pl : pl + wq], 0, nb * hq)
  if timed:
    t1 = read_cycles()
    cycles[1] += t1 - t0
    t0 = t1
  x4 = np.empty((nb, geo[G_HQ3], geo[G_WQ3], geo[G_CW4]), np.uint64)
  bconv_sign_pool_range(x3, *c3, x4, 0, nb * geo[G_HQ3])
  if timed:
    t1 = read_cycles()
    cycles[2] += t1 - t0
    t0 = t1
  y4 = np.empty((nb, bias4.shape[0]))
  for b in range(nb):
    y4[b, :] = bias4  # pruned channels output their bias
  bdense_range(x4.reshape(nb, -1), w4, m4, idx4, kbits4, scale4, cols4, bias4, y4, flags4, 0, nb)
  if timed:
    t1 = read_cycles()
    cycles[3] += t1 - t0
    t0 = t1
  z = np.empty(bias4.shape[0])
  for b in range(nb):
    clip_bn_dense(y4[b], mult4, add4, z, kern_t, bout, out[b])
  if timed:
    cycles[4] += read_cycles() - t0


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
  const = _flag_bytes(width)
  if f["pruned_channels"]:
    const[:width] = (f["bias"] * mult + add >= 0).astype(np.uint8)
  s, t = rule
  pol = mult[c] >= 0  # the max pool is the OR of the bits (else the AND)
  um = np.where(pol, s >= 0, s < 0).astype(np.uint8)  # ... the bit of max(n) (else min(n))
  return {"s": s, "t": t, "um": um, "const": const}
