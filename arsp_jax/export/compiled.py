"""Compiled packed engine: the numpy reference (:class:`PackedModel`) with its binary layers
replaced by numba kernels (:mod:`arsp_jax.export.kernels`).

Per binary layer, prepared once at load time from the stored signs and mask:

* **binary inputs** (``+-1``: every hidden layer of a BNN): inputs are packed to 64-bit words
  (``x >= 0``), per pixel along the channels for convolutions; weights are repacked as 64-bit
  words per kernel tap (:mod:`arsp_jax.export.words`) and transposed to ``[F, O]`` so that
  the popcount loop is vectorised over output channels.  An output channel keeps only its words that hold a kept connection, padded to the
  layer's largest count ``F`` (fixed fan-in: the ``word`` format has exactly ``F`` whole words
  per channel and needs no mask; an unstructured mask keeps the mask words and costs an
  AND).  A layer that keeps most of its words runs every word without a gather.
  ``y = K - 2 * popcount((x XOR w) AND m)``, exact integers.  Convolutions pad the packed
  input with zero words (-1 inputs) and add back an exact integer correction per output
  position (the Flax model pads with 0).
* **real inputs** (the MLP's first layer, every layer of a ReLU network): dense layers use
  8-bit subset-sum tables per sample (``table[g, b]`` = sum of the inputs of byte ``g`` selected
  by ``b``: one lookup per weight byte instead of eight multiply-adds) up to
  :data:`LUT_MAX_BATCH` samples, BLAS in ``dtype`` above; real-input convolutions direct in
  float64 up to :data:`LUT_MAX_BATCH` images; grouped (depthwise) binary convolutions by
  :func:`kernels.grouped_conv_range`; full-precision layers above that are the reference's.

The forward pass is the plan of :mod:`arsp_jax.export.plan`, built from the export's graph
(no per-model code): ``layer -> [2x2 max pool] -> batchnorm -> sign`` fused into one kernel
that writes the next layer's packed input (:mod:`arsp_jax.export.conv_fused` for binary
convs with the pool), ``batchnorm -> clip -> classifier`` in one call per row; a graph whose
chain signature (:func:`plan.chain_signature`) is a chain of binary dense layers
(:data:`DENSE_CHAIN`) or the conv chain of ``cnn_small`` (:data:`CONV_CHAIN`) runs whole in one
numba call (:mod:`arsp_jax.export.dense_chain`, :mod:`arsp_jax.export.conv_chain`).
Importing this module without numba raises one line naming the ``engine`` extra.

Threads: the kernels split the batch (dense layers) or output rows (convolutions) over
``numba.get_num_threads()`` threads once a call has at least :data:`PARALLEL_MIN_WORDS` word
operations.  Results equal the reference's: integers exactly, real values in float64.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

import numpy as np

from arsp_jax.export import NEEDS_NUMBA

try:
  import numba
except ImportError as exc:  # one line that names the extra
  raise ImportError(NEEDS_NUMBA) from exc

from arsp_jax.export import (
  arrays,
  conv_chain,
  conv_fused,
  dense_chain,
  kernels,
  plan,
  rules,
  simd,
  words,
)
from arsp_jax.export.layout import gathered_words, lut_layout
from arsp_jax.export.packed import PackedModel

LUT_MAX_BATCH = 8
PARALLEL_MIN_WORDS = 1 << 20  # below this a thread start costs more than it saves
NO_CYCLES = np.zeros(0, np.int64)
WINDOW = simd.AVX512  # simd.window_bits8 (AVX-512 only: decided here, per host)
SELECT16 = simd.AVX512  # dense_chain.select16_counts (AVX-512 only: the MLP's one-word layer)
# the chains of layers (plan.chain_signature) that the one-call kernels run
DENSE_CHAIN = r"R?d(BAd)*BA[dD]"  # real-input binary dense, binary dense layers, a classifier
CONV_CHAIN = "CBAcPBAcPBARdBAD"  # conv, conv + pool, conv + pool, dense, classifier


class Packed(NamedTuple):
  """A layer input already packed: ``[N, W]`` (dense) or ``[B, H, W, Cw]`` (conv) uint64."""

  words: np.ndarray


def threads_for(work: int) -> int:
  return numba.get_num_threads() if work >= PARALLEL_MIN_WORDS else 1


class CompiledModel(PackedModel):
  """An exported model run with the compiled kernels; see the module docstring."""

  def __init__(self, loaded: dict, dtype=np.float64):
    super().__init__(loaded, dtype)
    self.fast = {k: self._prepare_fast(k, p) for k, p in self.binary.items()}
    self.conv_corr: dict = {}
    self.tails: dict = {}  # bn name -> the arrays of out(clip(bn(.))) in one call, or None
    self.steps = plan.build_steps(self.ops, self.spec, self.packs)
    self.chain = plan.chain_signature(self.ops, self.spec)
    self.dense_chain = self._dense_chain_plan()
    self.forward = self.forward_steps
    if self.dense_chain is not None:
      self.forward = self.forward_dense_chain
    elif self.chain is not None and self.chain[0] == CONV_CHAIN:
      self.forward = self.forward_conv_chain

  def packs(self, *names) -> bool:
    return all(self.fast.get(n) is not None and "w" in self.fast[n] for n in names)

  # -- preparation ---------------------------------------------------------------------
  def _prepare_fast(self, name: str, p: dict) -> dict | None:
    spec = self.spec[name]
    if spec.get("groups", 1) > 1 or (not spec["binary_inputs"] and spec["type"] == "BinaryConv"):
      return None
    eff = p["eff"]  # [O_s, R] +1/-1/0
    o_s = eff.shape[0]
    scatter = p["channels"] is not None and not p["compact"]
    o = p["O"] if scatter else o_s
    common = {
      "scale": np.ones(o_s) if p["scale"] is None else np.asarray(p["scale"], np.float64),
      "cols": np.asarray(p["channels"], np.int64) if scatter else np.arange(o_s),
      "bias": np.zeros(o) if p["bias"] is None else np.array(p["bias"], np.float64),
      "pruned_channels": scatter,
    }
    const = p["input_const"]  # inputs dropped after a channel-pruned layer, per stored row
    if not spec["binary_inputs"]:
      if const is not None:  # dense only (real-input convolutions are not compiled)
        common["bias"][common["cols"]] += const * common["scale"]
      return {**common, **lut_layout(eff)}
    in_ch = p["shape"][-2]
    taps = words.tap_view(eff, in_ch)  # [O_s, T, I]
    sw = words.pack_taps(taps > 0).reshape(o_s, -1)
    mw = words.pack_taps(taps != 0).reshape(o_s, -1)
    valid = words.pack_taps(np.ones(taps.shape[1:], bool)).reshape(-1)
    fast = {**common, **gathered_words(sw, mw, valid)}
    fast["kbits"] = (eff != 0).sum(axis=1).astype(np.int64)
    if const is not None and spec["type"] == "BinaryDense":
      fast["kbits"] += np.rint(const).astype(np.int64)  # exact: sums of +-1 products
    if spec["type"] == "BinaryConv":
      fast["tap_sums"] = taps.sum(axis=-1, dtype=np.int64)  # [O_s, T]
      fast["cw"] = -(-in_ch // words.WORD_BITS)
    return fast

  def _correction(self, name: str, hw) -> tuple:
    """(``[Ho * Wo, O_s]`` what the zero-word padding (-1 inputs) took from each output,
    ``[Ho * Wo]`` the positions with a padded tap)."""
    key = (name, tuple(hw))
    if key not in self.conv_corr:
      spec, f = self.spec[name], self.fast[name]
      kh, kw = spec["kernel_size"]
      ind = arrays.pad(np.zeros((1, *hw, 1), np.int64), spec["padding"], 1)
      taps = arrays.windows(ind, kh, kw, *spec["strides"])[0, ..., 0]  # [Ho, Wo, kh, kw]
      oob = taps.reshape(-1, kh * kw)
      corr = oob @ f["tap_sums"].T
      border = oob.any(axis=1)
      if self.binary[name]["input_const"] is not None:
        corr = corr + np.rint(self.input_const_map(name, hw)).astype(np.int64)
        border[:] = True
      self.conv_corr[key] = (np.ascontiguousarray(corr, dtype=np.int64), border)
    return self.conv_corr[key]

  # -- layers --------------------------------------------------------------------------
  def _output(self, f: dict, shape) -> np.ndarray:
    if f["pruned_channels"]:  # pruned channels output their bias
      return np.broadcast_to(f["bias"], shape).copy()
    return np.empty(shape, np.float64)

  def binary_dense(self, name: str, x) -> np.ndarray:
    f = self.fast.get(name)
    packed = isinstance(x, Packed)
    if f is None or (not packed and "pos" in f and x.shape[0] > LUT_MAX_BATCH):
      return super().binary_dense(name, x)
    if "pos" in f:
      return self._lut_dense(f, np.ascontiguousarray(x, np.float64).reshape(x.shape[0], -1))
    xw = x.words if packed else self._pack(np.asarray(x).reshape(x.shape[0], -1))
    n = xw.shape[0]
    out = self._output(f, (n, f["bias"].shape[0]))
    width, o_s = f["w"].shape
    args = (f["w"], f["m"], f["idx"], f["kbits"], f["scale"], f["cols"], f["bias"], out)
    chunks = min(threads_for(n * o_s * width), n)
    if chunks > 1:
      kernels.bdense_par(xw, *args, (*f["flags"], f["pruned_channels"]), chunks)
    else:
      kernels.bdense_range(xw, *args, (*f["flags"], f["pruned_channels"]), 0, n)
    return out

  def _lut_dense(self, f: dict, x: np.ndarray) -> np.ndarray:
    out = self._output(f, (x.shape[0], f["bias"].shape[0]))
    table = np.empty((-(-x.shape[1] // 8), 256), np.float64)
    args = (f["pos"], f["neg"], f["gidx"], f["has_neg"], f["scale"], f["cols"], f["bias"], out)
    acc = np.empty(f["pos"].shape[1], np.float64)
    chunks = threads_for(8 * f["pos"].size)
    if chunks > 1:
      kernels.lut_dense_par(x, *args, table, acc, chunks)
    else:
      kernels.lut_dense_range(x, *args, table, acc)
    return out

  @staticmethod
  def _pack(x2d: np.ndarray) -> np.ndarray:
    x2d = np.ascontiguousarray(x2d)
    n, r = x2d.shape
    out = np.empty((n, -(-r // words.WORD_BITS)), np.uint64)
    kernels.pack_rows_range(x2d, out, 0, n)
    return out

  def binary_conv(self, name: str, x) -> np.ndarray:
    f = self.fast.get(name)
    if f is None and self.spec[name]["groups"] > 1 and not isinstance(x, Packed):
      return self.grouped_conv(name, x)
    if f is None:
      return super().binary_conv(name, x)
    spec = self.spec[name]
    if isinstance(x, Packed):
      xb = x.words
    else:
      b, h, w, c = x.shape
      xb = self._pack(np.asarray(x).reshape(-1, c)).reshape(b, h, w, -1)
    b, h, w = xb.shape[:3]
    kh, kw = spec["kernel_size"]
    (pt, pb), (pl, pr) = spec["padding"]
    sh, sw = spec["strides"]
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    xbp = np.zeros((b, h + pt + pb, w + pl + pr, xb.shape[3]), np.uint64)  # np.pad: 20 us
    xbp[:, pt : pt + h, pl : pl + w] = xb
    out = self._output(f, (b, ho, wo, f["bias"].shape[0]))
    geom = np.array([kh, kw, sh, sw], np.int64)
    width, o_s = f["w"].shape
    args = (f["w"], f["m"], f["idx"], f["kbits"], *self._correction(name, (h, w)), geom)
    args += (f["scale"], f["cols"], f["bias"], out, (*f["flags"], f["pruned_channels"]))
    chunks = threads_for(b * ho * wo * o_s * width)
    if chunks > 1:
      kernels.bconv_par(xbp, *args, min(chunks * 4, b * ho))
    else:
      kernels.bconv_range(xbp, *args, 0, b * ho)
    return out

  def grouped_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    """A grouped (depthwise) binary conv by :func:`kernels.grouped_conv_range` (float64, on
    ``sign(x)`` for binary inputs: exact integers, as the reference's einsum)."""
    spec, p = self.spec[name], self.binary[name]
    if "wfull" not in p:
      p["wfull"] = np.ascontiguousarray(self.full_matrix(p), np.float64)
    xin = np.where(x >= 0, 1.0, -1.0) if spec["binary_inputs"] else x
    (pt, pb), (pl, pr) = spec["padding"]
    b, h, w, c = x.shape
    xp = np.zeros((b, h + pt + pb, w + pl + pr, c))
    xp[:, pt : pt + h, pl : pl + w] = xin
    kh, kw = spec["kernel_size"]
    sh, sw = spec["strides"]
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.empty((b, ho, wo, p["wfull"].shape[1]))
    geom = np.array([kh, kw, sh, sw], np.int64)
    kernels.grouped_conv_range(xp, p["wfull"], out, geom, spec["groups"], 0, b * ho)
    p2 = dict(p, channels=None, scale=self.full_scale(p))
    return self.finish_binary(p2, out.astype(self.dtype, copy=False))

  def real_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    """Full-precision convolutions (a BNN's first layer) up to :data:`LUT_MAX_BATCH` images
    compiled (direct, float64), larger batches and grouped ones by the reference (BLAS)."""
    spec = self.spec[name]
    if spec["groups"] > 1 or x.shape[0] > LUT_MAX_BATCH:
      return super().real_conv(name, x)
    real, xp, ho, wo, geom = self._real_conv_inputs(name, x)
    out = np.empty((x.shape[0], ho, wo, real["w2d"].shape[1]))
    kernels.rconv_range(xp, real["w2d"], real["b64"], out, geom, 0, x.shape[0] * ho)
    return out

  def real_conv_arrays(self, name: str) -> dict:
    """The layer's real arrays with float64 ``w2d [K, O]`` and ``b64`` added."""
    real = self.real[name]
    if "w2d" not in real:
      real["w2d"] = np.ascontiguousarray(real["kernel"].reshape(-1, real["kernel"].shape[-1]))
      real["w2d"] = real["w2d"].astype(np.float64)
      real["b64"] = np.asarray(real.get("bias", np.zeros(real["w2d"].shape[1])), np.float64)
    return real

  def _real_conv_inputs(self, name: str, x: np.ndarray) -> tuple:
    """(real arrays with float64 ``w2d``/``b64``, zero-padded float64 input, Ho, Wo, geometry)."""
    spec, real = self.spec[name], self.real_conv_arrays(name)
    (pt, pb), (pl, pr) = spec["padding"]
    b, h, w, c = x.shape
    xp = np.zeros((b, h + pt + pb, w + pl + pr, c))  # np.pad costs ~20 us
    xp[:, pt : pt + h, pl : pl + w] = x
    kh, kw = spec["kernel_size"]
    sh, sw = spec["strides"]
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    return real, xp, ho, wo, np.array([kh, kw, sh, sw], np.int64)

  def real_conv_sign_packed(self, name: str, bn: str, x: np.ndarray) -> Packed | None:
    """Packed ``sign(bn(conv(x)))`` in one kernel (:func:`kernels.rconv_bn_sign_pack`)
    for a real-input ungrouped conv at small batches; None otherwise (then the layer and
    :meth:`bn_sign_packed` run apart, with the same arithmetic)."""
    spec = self.spec[name]
    if spec["type"] != "Conv" or spec["groups"] > 1 or x.shape[0] > LUT_MAX_BATCH:
      return None
    real, xp, ho, wo, geom = self._real_conv_inputs(name, x)
    mult, add = (np.asarray(a, np.float64) for a in self.bn[bn])
    out = np.empty((x.shape[0], ho, wo, -(-real["w2d"].shape[1] // words.WORD_BITS)), np.uint64)
    k, o = real["w2d"].shape
    n_px = 0 if k == 9 and x.shape[3] == 1 else ho * wo  # 3x3 single-channel: no buffers
    pt, y = np.empty((k, n_px)), np.empty((o, n_px))
    kernels.rconv_bn_sign_pack(xp, real["w2d"], real["b64"], mult, add, out, pt, y, geom)
    return Packed(out)

  # -- the plan ------------------------------------------------------------------------
  def forward_steps(self, x):
    """The plan's steps (:mod:`arsp_jax.export.plan`) in order on images ``x``."""
    env = dict(self.consts)
    env[0] = x
    for step in self.steps:
      if step.kind == "sign_pack":
        env[step.out] = self.run_sign_pack(step, env[step.src])
      elif step.kind == "tail":
        env[step.out] = self.run_tail(step, env[step.src])
      else:
        env[step.out] = self.run_op(step.ops[0], env)
    return env[self.ops[-1].ins[0]]

  def run_ops(self, step: plan.Step, x):
    """A fused step's graph ops one by one (when its kernel does not apply)."""
    env = dict(self.consts)
    env[step.src] = x
    for op in step.ops:
      env[op.out] = self.run_op(op, env)
    return env[step.out]

  def run_sign_pack(self, step: plan.Step, x):
    """``[flatten](sign(bn([pool](layer(x)))))`` packed; a float array when the flattened
    packed words would not be the next layer's words (channels not a multiple of 64)."""
    if step.flatten and self.bn[step.bn][0].shape[0] % words.WORD_BITS:
      return self.run_ops(step, x)
    spec, xb = self.spec[step.layer], None
    if step.pool and self.packs(step.layer):
      xin = x if isinstance(x, Packed) else Packed(self._pack_nhwc(x))
      xb = self._timed(step.layer, self.conv_sign_pool, step.layer, step.bn, xin)
    elif not step.pool and spec["type"] == "Conv" and not isinstance(x, Packed):
      xb = self._timed(step.layer, self.real_conv_sign_packed, step.layer, step.bn, x)
    if xb is None:
      xb = self.bn_sign_packed(step.bn, self.layer(step.layer, x), pool=step.pool)
    if step.flatten:
      return Packed(xb.words.reshape(xb.words.shape[0], -1))
    return xb

  def run_tail(self, step: plan.Step, y):
    """``dense(clip(bn(y)))`` in one numba call per row up to :data:`LUT_MAX_BATCH` rows."""
    tail = self.clip_bn_out(step.bn, step.layer) if y.shape[0] <= LUT_MAX_BATCH else None
    if tail is None:
      return self.run_ops(step, y)
    return self._timed(step.layer, self._run_tail, tail, y)

  def _dense_chain_plan(self) -> dict | None:
    """The one-call pass of a graph that is a chain of dense layers (see
    :func:`dense_chain.mlp_plan`), or None."""
    if self.chain is None or not re.fullmatch(DENSE_CHAIN, self.chain[0]):
      return None
    names = self.chain[1]
    dense = [n for n in names if self.spec[n]["type"] in ("Dense", "BinaryDense")]
    bns = [n for n in names if self.spec[n]["type"] == "BatchNorm"]
    return dense_chain.mlp_plan(self, dense, bns, SELECT16)

  def forward_dense_chain(self, x):
    """The whole dense chain in one numba call (:mod:`arsp_jax.export.dense_chain`); above
    :data:`LUT_MAX_BATCH` rows that are not all 8-bit pixels the plan's steps (BLAS)."""
    plan_ = self.dense_chain
    x2 = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32)
    bufs = plan_["buffers"]
    if x2.shape[0] > LUT_MAX_BATCH and not dense_chain.all_pixels(x2, bufs):
      return self.forward_steps(x)
    out = np.empty((x2.shape[0], plan_["n_out"]), np.float64)
    if self.timings is None:
      dense_chain.mlp_forward(x2, bufs, plan_["n_layers"], out, NO_CYCLES)
      return out
    cycles = np.zeros(len(plan_["names"]), np.int64)
    dense_chain.mlp_forward(x2, bufs, plan_["n_layers"], out, cycles)
    hz = simd.tsc_hz()
    for name, c in zip(plan_["names"], cycles):
      self.timings[name] = self.timings.get(name, 0.0) + c / hz
    return out

  def forward_conv_chain(self, x):
    """The whole conv chain in one call (:meth:`run_conv_chain`) up to
    :data:`LUT_MAX_BATCH` images; else (or when it does not fit) the plan's steps."""
    if x.shape[0] <= LUT_MAX_BATCH:
      plan_ = self.conv_chain_plan(*x.shape[1:])
      if plan_ is not None:
        return self.run_conv_chain(plan_, x)
    return self.forward_steps(x)

  def _pack_nhwc(self, x: np.ndarray) -> np.ndarray:
    b, h, w, c = x.shape
    return self._pack(np.asarray(x).reshape(-1, c)).reshape(b, h, w, -1)

  # -- fused kernels -----------------------------------------------------------------
  def bn_sign_packed(self, bn: str, y: np.ndarray, pool: bool = False) -> Packed:
    """Packed ``sign(batchnorm([max_pool2](y)))`` of a layer output (NHWC or ``[N, C]``)."""
    mult, add = (np.asarray(a, np.float64) for a in self.bn[bn])
    y = np.ascontiguousarray(y, np.float64)
    cw = -(-y.shape[-1] // words.WORD_BITS)
    if pool:
      b, h, w, _ = y.shape
      out = np.empty((b, h // 2, w // 2, cw), np.uint64)
      kernels.pool_bn_sign_pack_range(y, mult, add, out, 0, b * (h // 2))
      return Packed(out)
    flat = y.reshape(-1, y.shape[-1])
    out = np.empty((flat.shape[0], cw), np.uint64)
    kernels.bn_sign_pack_range(flat, mult, add, out, 0, flat.shape[0])
    return Packed(out.reshape(*y.shape[:-1], cw))

  def sign_pool_rule(self, name: str, bn: str, h: int, w: int, cin: int) -> dict | None:
    """The arrays of :func:`conv_fused.bconv_sign_pool_range` for layer ``name`` on ``h x w``
    inputs of ``cin`` words per pixel (cached), or None when the rule is not a threshold."""
    key = ("sign_pool", name, h, w)
    if key not in self.conv_corr:
      corr, border = self._correction(name, (h, w))
      self.conv_corr[key] = conv_fused.sign_pool_rule(
        self, name, bn, (h, w), cin, corr, border, WINDOW
      )
    return self.conv_corr[key]

  def conv_chain_plan(self, h: int, w: int, c: int) -> dict | None:
    """The arrays of :func:`conv_chain.conv_chain_forward` for ``h x w x c`` images (cached),
    or None when the model's layers do not fit it (then the plan's steps run)."""
    key = ("conv_chain_plan", h, w, c)
    if key not in self.conv_corr:
      self.conv_corr[key] = conv_chain.chain_plan(self, self.chain[1], h, w)
    return self.conv_corr[key]

  def run_conv_chain(self, plan: dict, x: np.ndarray) -> np.ndarray:
    """The conv chain in one numba call (:func:`conv_chain.conv_chain_forward`)."""
    x = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], plan["n_out"]), np.float64)
    if self.timings is None:
      conv_chain.conv_chain_forward(x, plan["buffers"], out, NO_CYCLES)
      return out
    cycles = np.zeros(5, np.int64)
    conv_chain.conv_chain_forward(x, plan["buffers"], out, cycles)
    hz = simd.tsc_hz()
    for name, c in zip(self.chain[1][::2], cycles):
      self.timings[name] = self.timings.get(name, 0.0) + c / hz
    return out

  def conv_sign_pool(self, name: str, bn: str, x: Packed) -> Packed | None:
    """Packed ``sign(bn(max_pool2(conv(x))))`` in one kernel
    (:func:`conv_fused.bconv_sign_pool_range`), or None when the rule is not a threshold."""
    f, spec = self.fast[name], self.spec[name]
    xb = x.words
    b, h, w, cin = xb.shape
    rule = self.sign_pool_rule(name, bn, h, w, cin)
    if rule is None:
      return None
    (pt, pb), (pl, pr) = spec["padding"]
    xbp = np.zeros((b, h + pt + pb, w + pl + pr, cin), np.uint64)
    xbp[:, pt : pt + h, pl : pl + w] = xb
    cw = -(-f["bias"].shape[0] // words.WORD_BITS)
    hq, wq = rule["out_hw"]
    out = np.empty((b, hq, wq, cw), np.uint64)
    width, o_s = f["w"].shape
    chunks = threads_for(b * 4 * hq * wq * o_s * width)
    if chunks > 1:
      conv_fused.bconv_sign_pool_par(xbp, *rule["args"], out, min(chunks * 4, b * hq))
    else:
      conv_fused.bconv_sign_pool_range(xbp, *rule["args"], out, 0, b * hq)
    return Packed(out)

  def _timed(self, name: str, fn, *args):
    if self.timings is None:
      return fn(*args)
    t = time.perf_counter()
    out = fn(*args)
    self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
    return out

  def clip_bn_out(self, bn: str, out: str) -> dict | None:
    """The arrays of ``out(clip(bn(y)))`` in one numba call (:func:`dense_chain.clip_bn_dense`, as
    the fused MLP pass ends), or None when ``out`` is not a float Dense layer. Used at small
    batches, where the per-call cost of the three numpy steps exceeds their arithmetic."""
    if bn not in self.tails:
      tail = None
      if self.spec[out]["type"] == "Dense":
        kern, bout = rules.float_out_arrays(self.real[out])
        mult, add = (np.asarray(a, np.float64) for a in self.bn[bn])
        tail = {"mult": mult, "add": add, "kern_t": np.ascontiguousarray(kern.T), "bout": bout}
        tail["z"] = np.zeros(kern.shape[0])
      self.tails[bn] = tail
    return self.tails[bn]

  @staticmethod
  def _run_tail(t: dict, y: np.ndarray) -> np.ndarray:
    y = np.ascontiguousarray(y, np.float64)
    out = np.empty((y.shape[0], t["bout"].shape[0]))
    for n in range(y.shape[0]):
      dense_chain.clip_bn_dense(y[n], t["mult"], t["add"], t["z"], t["kern_t"], t["bout"], out[n])
    return out
