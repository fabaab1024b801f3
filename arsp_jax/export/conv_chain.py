"""The conv chain in one numba call: the compiled engine's one-call pass for graphs whose
chain signature is ``CBAcPBAcPBARdBAD`` (real conv, binary conv + pool, binary conv + pool,
binary dense, classifier: ``cnn_small`` in BNN mode).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from arsp_jax.export import words
from arsp_jax.export.conv_fused import ConvOpts, bconv_sign_pool_range
from arsp_jax.export.dense_chain import clip_bn_dense
from arsp_jax.export.flat import Flat, grid, span
from arsp_jax.export.kernels import bdense_range, rconv_bn_sign_pack
from arsp_jax.export.simd import read_cycles

# the chain's geometry for :func:`conv_chain_forward` (int64 array slots)
G_KH, G_KW, G_SH, G_SW = range(4)  # conv1's kernel and strides (rconv_bn_sign_pack's geom)
G_PT1, G_PL1, G_HP1, G_WP1 = range(4, 8)  # conv1's padding, padded input
G_PT2, G_PL2, G_HP2, G_WP2, G_CW2 = range(8, 13)  # conv2's padding, padded packed input
G_HO1, G_WO1, G_PT3, G_PL3, G_HP3, G_WP3, G_CW3 = range(13, 20)  # conv3's
G_HQ2, G_WQ2, G_HQ3, G_WQ3, G_CW4 = range(20, 25)  # pooled outputs of conv2, conv3
N_GEO = 25


# conv_chain_forward's slots in its flat buffers (:class:`Flat`): conv1 (w, bias, mult, add),
# conv2 and conv3 (the 12 arrays of bconv_sign_pool_range), fc4 (the 8 of bdense_range, its
# flags an int array), the tail (mult, add, kern_t, bout), the geometry
S_C1, S_C2, S_C3, S_D4, S_TAIL, S_GEO = 0, 4, 16, 28, 36, 40


@njit(cache=True, inline="always")
def _conv_slots(B, k):
  """The arrays of :func:`bconv_sign_pool_range` from slot ``k`` on."""
  ub, ib, fb, sb, bb, i4, meta = B
  return (
    grid(ub, meta, k),
    grid(ub, meta, k + 1),
    span(ib, meta, k + 2),
    grid(ub, meta, k + 3),
    grid(i4, meta, k + 4),
    span(ib, meta, k + 5),
    span(i4, meta, k + 6),
    span(i4, meta, k + 7),
    span(bb, meta, k + 8),
    span(bb, meta, k + 9),
    span(ib, meta, k + 10),
    span(ib, meta, k + 11),
  )


@njit(cache=True)
def _conv(xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, o, out, lo, hi):
  """:func:`bconv_sign_pool_range` with its :class:`ConvOpts` built from their int64 slot, in a
  call of its own (built inside the chain's body, the kernel measured up to 1.5x slower)."""
  opts = ConvOpts(o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8])
  bconv_sign_pool_range(
    xbp, w_t, m_t, foff, goff, kbz, krow, nlo, nhi, um, const, cols, opts, out, lo, hi
  )


@njit(cache=True)
def _into_padded(src, dst, pt, pl):
  """``dst[:, pt:pt + h, pl:pl + w] = src``. The kernels write contiguous outputs and this
  copies them into the next conv's padded input: a kernel handed the padded buffer's view
  instead compiles a second ('A'-layout) specialisation of itself and of every kernel it
  inlines, besides the per-layer path's contiguous one (measured: about 20 s more of numba
  compilation on a cold cache for ``cnn_small``); the copy is a few words per pixel."""
  for b in range(src.shape[0]):
    for i in range(src.shape[1]):
      for j in range(src.shape[2]):
        for c in range(src.shape[3]):
          dst[b, pt + i, pl + j, c] = src[b, i, j, c]


@njit(cache=True)
def conv_chain_forward(x, B, out, cycles):
  """The conv chain (the BNN ``cnn_small``) on images ``x [B, H, W, C]`` -> logits ``out [B, classes]`` in
  one call (no Python between the layers, no array made outside): conv1 + bn1 + sign + pack
  (:func:`rconv_bn_sign_pack`) into conv2's zero-padded packed input, conv2 and conv3 with
  their max pool + batchnorm + sign (:func:`bconv_sign_pool_range`), the first into conv3's
  padded input, fc4's float outputs (:func:`kernels.bdense_range`) and
  ``out(clip(bn4(.)))`` (:func:`clip_bn_dense`): the same kernels, so the same values, as
  the per-layer path.  The arrays are in the flat buffers ``B`` (slots ``S_*``; 7 arrays to
  unbox per call instead of 41: measured 4.4 us for the 41 as tuples); ``cycles`` (empty,
  or 5 slots) accumulates time-stamp-counter ticks per layer."""
  ub, ib, fb, sb, bb, i4, meta = B
  geo = span(ib, meta, S_GEO)
  w1, b1 = grid(fb, meta, S_C1), span(fb, meta, S_C1 + 1)
  mult1, add1 = span(fb, meta, S_C1 + 2), span(fb, meta, S_C1 + 3)
  c2, c3 = _conv_slots(B, S_C2), _conv_slots(B, S_C3)
  w4, m4, idx4 = grid(ub, meta, S_D4), grid(ub, meta, S_D4 + 1), grid(ib, meta, S_D4 + 2)
  kbits4, scale4 = span(ib, meta, S_D4 + 3), span(fb, meta, S_D4 + 4)
  cols4, bias4, flags4 = (
    span(ib, meta, S_D4 + 5),
    span(fb, meta, S_D4 + 6),
    span(ib, meta, S_D4 + 7),
  )
  mult4, add4 = span(fb, meta, S_TAIL), span(fb, meta, S_TAIL + 1)
  kern_t, bout = grid(fb, meta, S_TAIL + 2), span(fb, meta, S_TAIL + 3)
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
  o1 = np.empty((nb, ho1, wo1, geo[G_CW2]), np.uint64)  # contiguous: see _into_padded
  rconv_bn_sign_pack(xp, w1, b1, mult1, add1, o1, pt_buf, y1, geo)
  _into_padded(o1, x2, pt, pl)
  if timed:
    t1 = read_cycles()
    cycles[0] += t1 - t0
    t0 = t1
  hq, wq = geo[G_HQ2], geo[G_WQ2]
  x3 = np.zeros((nb, geo[G_HP3], geo[G_WP3], geo[G_CW3]), np.uint64)
  pt, pl = geo[G_PT3], geo[G_PL3]
  o2 = np.empty((nb, hq, wq, geo[G_CW3]), np.uint64)
  _conv(x2, *c2, o2, 0, nb * hq)
  _into_padded(o2, x3, pt, pl)
  if timed:
    t1 = read_cycles()
    cycles[1] += t1 - t0
    t0 = t1
  x4 = np.empty((nb, geo[G_HQ3], geo[G_WQ3], geo[G_CW4]), np.uint64)
  _conv(x3, *c3, x4, 0, nb * geo[G_HQ3])
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


def chain_plan(model, names, h: int, w: int) -> dict | None:
  """The flat buffers of :func:`conv_chain_forward` for ``model`` (a ``CompiledModel``) whose
  chain's layers are ``names`` (conv1, bn1, conv2, bn2, conv3, bn3, dense, bn, classifier)
  on ``h x w`` images, or None when the layers do not fit it (then the plan's steps run)."""
  conv1, bn1, conv2, bn2, conv3, bn3, fc4, bn4, out = names
  s1, word = model.spec[conv1], words.WORD_BITS
  if s1["groups"] > 1 or not model.packs(conv2, conv3, fc4):
    return None
  if model.fast[conv3]["bias"].shape[0] % word:  # (h, w, c) words = fc4's flat words
    return None
  tail = model.clip_bn_out(bn4, out)
  if tail is None:
    return None
  real = model.real_conv_arrays(conv1)
  kh, kw = s1["kernel_size"]
  (pt1, pb1), (pl1, pr1) = s1["padding"]
  sh, sw = s1["strides"]
  hp1, wp1 = h + pt1 + pb1, w + pl1 + pr1
  ho1, wo1 = (hp1 - kh) // sh + 1, (wp1 - kw) // sw + 1
  cw2 = -(-real["w2d"].shape[1] // word)
  (pt2, pb2), (pl2, pr2) = model.spec[conv2]["padding"]
  r2 = model.sign_pool_rule(conv2, bn2, ho1, wo1, cw2)
  if r2 is None:
    return None
  hq2, wq2 = r2["out_hw"]
  cw3 = -(-model.fast[conv2]["bias"].shape[0] // word)
  (pt3, pb3), (pl3, pr3) = model.spec[conv3]["padding"]
  r3 = model.sign_pool_rule(conv3, bn3, hq2, wq2, cw3)
  if r3 is None:
    return None
  hq3, wq3 = r3["out_hw"]
  geo = [kh, kw, sh, sw, pt1, pl1, hp1, wp1]
  geo += [pt2, pl2, ho1 + pt2 + pb2, wo1 + pl2 + pr2, cw2]
  geo += [ho1, wo1, pt3, pl3, hq2 + pt3 + pb3, wq2 + pl3 + pr3, cw3]
  geo += [hq2, wq2, hq3, wq3, model.fast[conv3]["bias"].shape[0] // word]
  assert len(geo) == N_GEO
  f4 = model.fast[fc4]
  mult1, add1 = (np.asarray(a, np.float64) for a in model.bn[bn1])
  slots = [real["w2d"], real["b64"], mult1, add1]
  slots += [*r2["args"][:-1], r2["opts_array"], *r3["args"][:-1], r3["opts_array"]]
  slots += [f4["w"], f4["m"], f4["idx"], f4["kbits"], f4["scale"], f4["cols"], f4["bias"]]
  slots += [np.array([*f4["flags"], f4["pruned_channels"]], np.int64)]
  slots += [tail["mult"], tail["add"], tail["kern_t"], tail["bout"], np.array(geo, np.int64)]
  flat = Flat()
  for a in slots:
    flat.add(a)
  assert len(flat.items) == S_GEO + 1
  return {"buffers": flat.finish(), "n_out": tail["bout"].shape[0]}
