"""A chain of binary dense layers (the BNN MLP) in one numba call: the compiled engine's
one-call pass for graphs whose chain signature is ``R?d(BAd)*BA[dD]``.

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

import numpy as np
from numba import njit

from arsp_jax.export import words
from arsp_jax.export.flat import Flat, grid, span
from arsp_jax.export.kernels import (
  PACK_MUL,
  lut_rows,
  pack_flags,
  popcount_rows,
  subset_sums,
)
from arsp_jax.export.layout import gathered_words
from arsp_jax.export.rules import flag_bytes, float_out_arrays, popcount_bounds, sign_thresholds
from arsp_jax.export.simd import popcount64, read_cycles, select16_counts

LOW_BITS = np.uint64(0x0101010101010101)

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


# --------------------------------------------------------------------------- kernels


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
  opts = span(ib, meta, F_OPTS)
  scale, cols, bias = span(fb, meta, F_SCALE), span(ib, meta, F_COLS), span(fb, meta, F_BIAS)
  y = span(fb, meta, F_Y)
  o_s = scale.shape[0]
  total = -1
  if opts[O_PIXELS]:
    planes, usum = grid(ub, meta, F_PLANES), span(ib, meta, F_USUM)
    mean, std = span(fb, meta, F_MEAN), span(fb, meta, F_STD)
    meanf, stdf = span(sb, meta, F_MEANF), span(sb, meta, F_STDF)
    total = pixel_planes(x, mean, std, meanf, stdf, span(bb, meta, F_U8), planes, usum)
  if total >= 0:  # integers: bit planes
    acci = span(ib, meta, F_ACCI)
    wp, wn, idx = grid(ub, meta, F_WP), grid(ub, meta, F_WN), grid(ib, meta, F_IDX)
    plane_rows(planes, usum, wp, wn, idx, opts[O_PLANE_MODE], acci)
    if opts[O_PLANE_MODE] == 0:  # dense +-1 rows: W . u = 2 W+ . u - sum(u)
      for o in range(o_s):
        acci[o] = 2 * acci[o] - total
    moff, sd = span(fb, meta, F_MOFF), span(fb, meta, F_SD)[0]
    for o in range(o_s):
      y[cols[o]] = ((acci[o] - moff[o]) / sd) * scale[o] + bias[cols[o]]
  else:  # float inputs: 8-bit subset-sum tables
    table, accf = grid(fb, meta, F_TABLE), span(fb, meta, F_ACCF)
    pos, neg, gidx = grid(bb, meta, F_POS), grid(bb, meta, F_NEG), grid(ib, meta, F_GIDX)
    subset_sums(x, table)
    lut_rows(table, pos, neg, gidx, opts[O_LUT_NEG] != 0, accf, 0, o_s)
    for o in range(o_s):
      y[cols[o]] = accf[o] * scale[o] + bias[cols[o]]
  flags = span(bb, meta, F_FLAGS)
  bn_sign_flags(y, span(fb, meta, F_MULT), span(fb, meta, F_ADD), flags)
  out_words = span(ub, meta, F_WORDS)
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
  opts = span(ib, meta, base + B_OPTS)
  acc, cols = span(i4, meta, base + B_ACC), span(ib, meta, base + B_COLS)
  w, m, idx = (
    grid(ub, meta, base + B_W),
    grid(ub, meta, base + B_M),
    grid(ib, meta, base + B_IDX),
  )
  lo, hi = span(ib, meta, base + B_LO), span(ib, meta, base + B_HI)
  flags, out_words = span(bb, meta, base + B_FLAGS), span(ub, meta, base + B_WORDS)
  has_mask, has_idx, scatter = opts[O_MASK] != 0, opts[O_GATHER] != 0, opts[O_SCATTER] != 0
  sign_words(xw, w, m, idx, has_mask, has_idx, acc, lo, hi, cols, scatter, flags, out_words)
  return out_words


@njit(cache=True)
def float_layer(xw, B, base):
  """A binary-input dense layer's float outputs ``y`` (the last binary layer)."""
  ub, ib, fb, sb, bb, i4, meta = B
  opts = span(ib, meta, base + B_OPTS)
  acc, cols = span(i4, meta, base + B_ACC), span(ib, meta, base + B_COLS)
  w, m, idx = (
    grid(ub, meta, base + B_W),
    grid(ub, meta, base + B_M),
    grid(ib, meta, base + B_IDX),
  )
  kbits, scale = span(i4, meta, base + B_KBITS), span(fb, meta, base + B_SCALE)
  bias, y = span(fb, meta, base + B_BIAS), span(fb, meta, base + B_Y)
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
    popcount_rows_sorted(xw, w, m, idx, acc, has_mask, span(ib, meta, base + B_SEG))
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
    y = span(fb, meta, N_FIRST + N_BINARY * (n_layers - 1) + B_Y)
    if real_out:
      mult, add = span(fb, meta, lb + L_MULT), span(fb, meta, lb + L_ADD)
      kern_t, bout = grid(fb, meta, lb + L_KERN_T), span(fb, meta, lb + L_BOUT)
      clip_bn_dense(y, mult, add, span(fb, meta, lb + L_Z), kern_t, bout, out[n])
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
      span(fb, meta, F_MEAN),
      span(fb, meta, F_STD),
      span(sb, meta, F_MEANF),
      span(sb, meta, F_STDF),
      span(bb, meta, F_U8),
      grid(ub, meta, F_PLANES),
      span(ib, meta, F_USUM),
    )
    if total < 0:
      return False
  return True


# --------------------------------------------------------------------------- preparation


def _opts(*values) -> np.ndarray:
  return np.array([int(v) for v in values], np.int64)


def _add_first(flat: Flat, model, name: str, bn: str) -> None:
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
    flag_bytes(width),
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
  flags = flag_bytes(width)
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
  last_opts = span(bufs[1], bufs[-1], N_FIRST + N_BINARY * (len(pop) - 1) + B_OPTS)
  return {
    "buffers": bufs,
    "n_layers": len(pop),
    "n_out": n_out,
    "names": names,
    "sorted_last": perm is not None,
    "select16": bool(last_opts[O_SELECT16]),
  }
