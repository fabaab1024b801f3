"""Packed inference engine for exported binary networks (numpy only): the reference.

``PackedModel(compress.load(path))`` (or ``PackedModel.from_file(path)``) runs an exported
model on NHWC float32 images (standardised like the training data; ``preprocess`` applies the
stored standardisation to raw pixels).  It imports numpy only.  The compiled engine
(:mod:`arsp_jax.export.compiled`, numba) is checked against it; :func:`arsp_jax.export.engine.load`
picks one.

Arithmetic, per layer kind:

* binary weights, binary (+-1) inputs: XNOR/XOR-popcount on 64-bit words (two of the stored
  32-bit words), ``y = K - 2 * popcount((x XOR w) AND m)`` with ``m`` the connection mask
  and ``K`` the kept connections of the output channel -- exact integers.  Convolutions
  pack the input once along the channel axis when the channel count is a multiple of 32
  (word-level im2col), else per patch; zero padding (which contributes 0, not +-1, in the
  Flax model) is handled by packing the padding as +1 and subtracting the exact integer
  contribution of the padded taps, precomputed per output position.
* binary weights, real inputs (e.g. the MLP's first layer, or every layer with ReLU
  activations): the packed weights are unpacked once to +1/-1/0 and multiplied in
  ``dtype`` (float64 by default).
* grouped/depthwise binary convolutions: unpacked +1/-1/0 weights, per-group products.
* full-precision layers and folded batchnorm (``x * mult + add``) in ``dtype``.
* channel-pruned layers are stored and computed with only their kept output channels; the
  pruned channels' outputs are exactly 0 (as in the masked Flax model) and are placed back
  before the batchnorm, so residual streams keep their width.

The Flax model computes in float32 with XLA's summation order; the engine computes integer
layers exactly and real-valued ones in float64 by default, so its logits agree with Flax's to
float32 rounding and its predictions (argmax) are equal unless two logits tie to within that
rounding (tests check equality on whole test sets).
"""

from __future__ import annotations

import numpy as np

from arsp_jax.export import arrays, bits, compress
from arsp_jax.export.forwards import EngineBase


class PackedModel(EngineBase):
  """An exported model run with numpy; see the module docstring."""

  def __init__(self, loaded: dict, dtype=np.float64):
    self.corr_cache: dict = {}
    super().__init__(loaded, dtype)

  @classmethod
  def from_file(cls, path: str, dtype=np.float64):
    return cls(compress.load(path), dtype=dtype)

  # -- preparation ---------------------------------------------------------------------
  def prepare_binary(self, name: str, dec: dict) -> dict:
    spec = self.spec[name]
    r = dec["R"]
    p = {
      "O": dec["O"],
      "R": r,
      "channels": dec["channels"],
      "shape": dec["shape"],
      "scale": None if dec.get("scale") is None else np.asarray(dec["scale"], self.dtype),
      "bias": None if dec.get("bias") is None else np.asarray(dec["bias"], self.dtype),
      "compact": dec.get("compact", False),
      "input_const": None,
    }
    if dec.get("input_const") is not None:  # inputs dropped after a channel-pruned layer
      const = np.asarray(dec["input_const"], np.float64)
      p["input_const"] = const if dec["channels"] is None else const[..., dec["channels"]]
    signs = bits.unpack_bits(dec["signs"], r)
    mask = None if dec["mask"] is None else bits.unpack_bits(dec["mask"], r)
    eff = np.where(signs, 1, -1).astype(np.int8)  # [O_s, R]
    if mask is not None:
      eff *= mask
    p["eff"] = eff
    groups = spec.get("groups", 1)
    if spec["binary_inputs"] and groups == 1:
      p["w64"] = arrays.to_u64(dec["signs"])
      p["m64"] = None if dec["mask"] is None else arrays.to_u64(dec["mask"])
      p["K"] = (
        np.full(eff.shape[0], r, np.int64) if mask is None else mask.sum(axis=1).astype(np.int64)
      )
    if not spec["binary_inputs"] or groups > 1:
      p["wf"] = np.ascontiguousarray(eff.T.astype(self.dtype))  # [R, O_s]
    return p

  def finish_binary(self, p: dict, y: np.ndarray) -> np.ndarray:
    if p["scale"] is not None:
      y = y * p["scale"]
    if p["channels"] is not None and not p["compact"]:
      full = np.zeros((*y.shape[:-1], p["O"]), self.dtype)
      full[..., p["channels"]] = y
      y = full
    if p["bias"] is not None:
      y = y + p["bias"]
    return y

  def binary_dense(self, name: str, x: np.ndarray) -> np.ndarray:
    p, spec = self.binary[name], self.spec[name]
    if spec["binary_inputs"]:
      xb = arrays.to_u64(bits.pack_bits(x >= 0))
      y = (p["K"] - 2 * arrays.xor_popcount(xb, p["w64"], p["m64"])).astype(self.dtype)
    else:
      y = x.astype(self.dtype) @ p["wf"]
    return self.finish_binary(p, self.add_input_const(name, y))

  def binary_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    p, spec = self.binary[name], self.spec[name]
    kh, kw = spec["kernel_size"]
    sh, sw = spec["strides"]
    groups = spec["groups"]
    b = x.shape[0]
    if groups > 1:
      xin = np.where(x >= 0, 1.0, -1.0).astype(self.dtype) if spec["binary_inputs"] else x
      w = self.full_matrix(p)  # [R, O] incl. pruned channels
      y = self.grouped(arrays.pad(xin.astype(self.dtype), spec["padding"], 0.0), w, spec)
      p2 = dict(p, channels=None, scale=self.full_scale(p))
      return self.finish_binary(p2, y)
    if not spec["binary_inputs"]:
      xp = arrays.pad(x.astype(self.dtype), spec["padding"], 0.0)
      pt = arrays.windows(xp, kh, kw, sh, sw)
      ho, wo = pt.shape[1:3]
      y = (pt.reshape(b * ho * wo, -1) @ p["wf"]).reshape(b, ho, wo, -1)
      return self.finish_binary(p, self.add_input_const(name, y, x.shape[1:3]))
    c = x.shape[-1]
    xp = arrays.pad(x >= 0, spec["padding"], True)  # padding packed as +1
    if c % 32 == 0:
      words = bits.pack_bits(xp)  # [B, Hp, Wp, C/32]
      pt = arrays.windows(words, kh, kw, sh, sw)
      ho, wo = pt.shape[1:3]
      xw = arrays.to_u64(np.ascontiguousarray(pt).reshape(b * ho * wo, -1))
    else:
      pt = arrays.windows(xp, kh, kw, sh, sw)
      ho, wo = pt.shape[1:3]
      xw = arrays.to_u64(bits.pack_bits(np.ascontiguousarray(pt).reshape(b * ho * wo, -1)))
    acc = p["K"] - 2 * arrays.xor_popcount(xw, p["w64"], p["m64"])  # [B*P, O_s]
    corr = self.padding_correction(name, x.shape[1:3])  # [P, O_s]
    y = (acc.reshape(b, ho * wo, -1) - corr).astype(self.dtype).reshape(b, ho, wo, -1)
    return self.finish_binary(p, self.add_input_const(name, y, x.shape[1:3]))

  def input_const_map(self, name: str, hw) -> np.ndarray:
    """``[P, O_s]``: the dropped input channels' contribution at each output position (the
    sum of the per-tap constants over the taps inside the image)."""
    key = ("input_const", name, tuple(hw))
    if key not in self.corr_cache:
      spec = self.spec[name]
      kh, kw = spec["kernel_size"]
      ind = arrays.pad(np.zeros((1, *hw, 1), np.int64), spec["padding"], 1)
      taps = arrays.windows(ind, kh, kw, *spec["strides"])[0, ..., 0]  # [Ho, Wo, kh, kw]
      inside = 1 - taps.reshape(-1, kh * kw)
      self.corr_cache[key] = inside @ self.binary[name]["input_const"]
    return self.corr_cache[key]

  def add_input_const(self, name: str, y: np.ndarray, hw=None) -> np.ndarray:
    const = self.binary[name]["input_const"]
    if const is None:
      return y
    if const.ndim == 1:
      return y + const
    return y + self.input_const_map(name, hw).reshape(y.shape[1:])

  def padding_correction(self, name: str, hw) -> np.ndarray:
    """Integer contribution of the padded taps when padding is packed as +1: ``[P, O_s]``."""
    key = (name, tuple(hw))
    if key not in self.corr_cache:
      p, spec = self.binary[name], self.spec[name]
      kh, kw = spec["kernel_size"]
      sh, sw = spec["strides"]
      ind = arrays.pad(np.zeros((1, *hw, 1), np.int64), spec["padding"], 1)
      taps = arrays.windows(ind, kh, kw, sh, sw)[0, ..., 0]  # [Ho, Wo, kh, kw]
      per_tap = p["eff"].reshape(p["eff"].shape[0], kh * kw, -1).sum(axis=-1)  # [O_s, T]
      self.corr_cache[key] = taps.reshape(-1, kh * kw).astype(np.int64) @ per_tap.T.astype(np.int64)
    return self.corr_cache[key]

  def full_matrix(self, p: dict) -> np.ndarray:
    """``[R, O]`` effective weights with pruned channels as zero columns."""
    if p["channels"] is None:
      return p["wf"]
    w = np.zeros((p["R"], p["O"]), self.dtype)
    w[:, p["channels"]] = p["wf"]
    return w

  def full_scale(self, p: dict):
    if p["scale"] is None or p["channels"] is None:
      return p["scale"]
    s = np.zeros(p["O"], self.dtype)
    s[p["channels"]] = p["scale"]
    return s

  def grouped(self, xp: np.ndarray, w: np.ndarray, spec: dict) -> np.ndarray:
    """Grouped convolution of a padded input with an ``[R, O]`` matrix (R = kh*kw*Cg)."""
    kh, kw = spec["kernel_size"]
    sh, sw = spec["strides"]
    g = spec["groups"]
    b, c = xp.shape[0], xp.shape[-1]
    cg, o = c // g, w.shape[1]
    og = o // g
    pt = arrays.windows(xp, kh, kw, sh, sw)  # [B,Ho,Wo,kh,kw,C]
    ho, wo = pt.shape[1:3]
    pt = pt.reshape(b, ho, wo, kh * kw, g, cg)
    wg = w.reshape(kh * kw, cg, g, og)
    y = np.einsum("bhwtgc,tcgo->bhwgo", pt, wg, optimize=True)
    return y.reshape(b, ho, wo, o)

  def real_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    spec = self.spec[name]
    k = self.real[name]["kernel"]  # HWIO
    xp = arrays.pad(x.astype(self.dtype), spec["padding"], 0.0)
    w = k.reshape(-1, k.shape[-1])
    if spec["groups"] > 1:
      y = self.grouped(xp, w, spec)
    else:
      kh, kw = spec["kernel_size"]
      sh, sw = spec["strides"]
      pt = arrays.windows(xp, kh, kw, sh, sw)
      b, ho, wo = pt.shape[:3]
      y = (pt.reshape(b * ho * wo, -1) @ w).reshape(b, ho, wo, -1)
    if "bias" in self.real[name]:
      y = y + self.real[name]["bias"]
    return y
