"""Packed inference engine for exported binary networks (numpy only).

``PackedModel(compress.load(path))`` (or ``PackedModel.from_file(path)``) runs an exported
model on NHWC float32 images (standardised like the training data; ``preprocess`` applies the
stored standardisation to raw pixels).  It imports numpy only.

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

import time
from typing import Callable

import numpy as np

from arsp_jax.export import compress

_TEMP_BYTES = 32 << 20  # bound on the XOR-popcount temporary per chunk


def _to_u64(words: np.ndarray) -> np.ndarray:
  """uint32 ``[..., W]`` -> uint64 ``[..., ceil(W / 2)]`` (zero word appended when W is odd)."""
  words = np.asarray(words, np.uint32)
  if words.shape[-1] % 2:
    words = np.concatenate([words, np.zeros((*words.shape[:-1], 1), np.uint32)], axis=-1)
  return np.ascontiguousarray(words).view(np.uint64)


def xor_popcount(x: np.ndarray, w: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
  """``popcount((x XOR w) AND m)`` summed over words: x ``[N, W]``, w/m ``[O, W]`` -> ``[N, O]``.

  One pass per 64-bit word over contiguous ``[N, O]`` arrays (3-4x faster in numpy than a
  broadcast ``[N, O, W]`` reduction over the short word axis), rows chunked to bound memory.
  """
  n, o = x.shape[0], w.shape[0]
  words = w.shape[1]
  if n * o * words <= (1 << 15):  # small (batch-1 dense): one broadcast
    t = x[:, None, :] ^ w[None]
    if m is not None:
      t &= m[None]
    return np.bitwise_count(t).sum(axis=-1, dtype=np.int64)
  acc_t = np.uint16 if 64 * words < (1 << 16) else np.int64
  out = np.empty((n, o), np.int64)
  xt = np.ascontiguousarray(x.T)  # [W, N]
  wt = np.ascontiguousarray(w.T)  # [W, O]
  mt = None if m is None else np.ascontiguousarray(m.T)
  step = max(1, _TEMP_BYTES // max(1, 8 * o))
  for s in range(0, n, step):
    e = min(n, s + step)
    tmp = np.empty((e - s, o), np.uint64)
    acc = np.zeros((e - s, o), acc_t)
    for j in range(words):
      np.bitwise_xor(xt[j, s:e, None], wt[j][None], out=tmp)
      if mt is not None:
        tmp &= mt[j][None]
      acc += np.bitwise_count(tmp)
    out[s:e] = acc
  return out


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
  """``[B, H, W, C]`` (already padded) -> ``[B, Ho, Wo, kh, kw, C]`` (a view when possible)."""
  v = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # [B,Ho',Wo',C,kh,kw]
  v = v[:, ::sh, ::sw]
  return v.transpose(0, 1, 2, 4, 5, 3)


def _pad(x: np.ndarray, padding, value) -> np.ndarray:
  (pt, pb), (pl, pr) = padding
  if not (pt or pb or pl or pr):
    return x
  return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


class PackedModel:
  """An exported model ready to run; see the module docstring."""

  def __init__(self, loaded: dict, dtype=np.float64):
    self.header = loaded["header"]
    arch = self.header["arch"]
    self.model = arch["model"]
    self.fields = arch["fields"]
    self.input_shape = tuple(arch["input_shape"])
    self.spec = {l["name"]: l for l in arch["layers"]}
    self.dtype = np.dtype(dtype)
    self.real = {
      k: {a: np.asarray(v, self.dtype) for a, v in d.items()} for k, d in loaded["real"].items()
    }
    self.bn = {
      k: (np.asarray(d["mult"], self.dtype), np.asarray(d["add"], self.dtype))
      for k, d in loaded["bn"].items()
    }
    self.binary = {k: self._prepare_binary(k, d) for k, d in loaded["binary"].items()}
    self._corr_cache: dict = {}
    self.timings: dict[str, float] | None = None
    forwards = {
      "mlp": self._mlp,
      "cnn_small": self._cnn_small,
      "vgg_small": self._vgg,
      "resnet18": self._resnet,
      "resnet50": self._resnet,
      "mobilenet_v2": self._mobilenet,
    }
    if self.model not in forwards:
      raise compress.ExportError(f"the packed engine does not know model {self.model!r}")
    self._forward = forwards[self.model]

  @classmethod
  def from_file(cls, path: str, dtype=np.float64) -> PackedModel:
    return cls(compress.load(path), dtype=dtype)

  # -- preparation ---------------------------------------------------------------------
  def _prepare_binary(self, name: str, dec: dict) -> dict:
    spec = self.spec[name]
    r = dec["R"]
    p = {
      "O": dec["O"],
      "R": r,
      "channels": dec["channels"],
      "shape": dec["shape"],
      "scale": None if dec.get("scale") is None else np.asarray(dec["scale"], self.dtype),
      "bias": None if dec.get("bias") is None else np.asarray(dec["bias"], self.dtype),
    }
    signs = compress.unpack_bits(dec["signs"], r)
    mask = None if dec["mask"] is None else compress.unpack_bits(dec["mask"], r)
    eff = np.where(signs, 1, -1).astype(np.int8)  # [O_s, R]
    if mask is not None:
      eff *= mask
    p["eff"] = eff
    groups = spec.get("groups", 1)
    if spec["binary_inputs"] and groups == 1:
      p["w64"] = _to_u64(dec["signs"])
      p["m64"] = None if dec["mask"] is None else _to_u64(dec["mask"])
      p["K"] = (
        np.full(eff.shape[0], r, np.int64) if mask is None else mask.sum(axis=1).astype(np.int64)
      )
    if not spec["binary_inputs"] or groups > 1:
      p["wf"] = np.ascontiguousarray(eff.T.astype(self.dtype))  # [R, O_s]
    return p

  # -- layers --------------------------------------------------------------------------
  def _timed(self, name: str, fn: Callable, *args):
    if self.timings is None:
      return fn(*args)
    t = time.perf_counter()
    out = fn(*args)
    self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
    return out

  def layer(self, name: str, x: np.ndarray) -> np.ndarray:
    return self._timed(name, self._layer, name, x)

  def _layer(self, name: str, x: np.ndarray) -> np.ndarray:
    spec = self.spec[name]
    t = spec["type"]
    if t in ("Dense", "BinaryDense"):
      y = (
        self._binary_dense(name, x)
        if t == "BinaryDense"
        else (x.astype(self.dtype) @ self.real[name]["kernel"])
      )
      if t == "Dense" and "bias" in self.real[name]:
        y = y + self.real[name]["bias"]
      return y
    if t == "BinaryConv":
      return self._binary_conv(name, x)
    return self._real_conv(name, x)

  def _finish_binary(self, p: dict, y: np.ndarray) -> np.ndarray:
    if p["scale"] is not None:
      y = y * p["scale"]
    if p["channels"] is not None:
      full = np.zeros((*y.shape[:-1], p["O"]), self.dtype)
      full[..., p["channels"]] = y
      y = full
    if p["bias"] is not None:
      y = y + p["bias"]
    return y

  def _binary_dense(self, name: str, x: np.ndarray) -> np.ndarray:
    p, spec = self.binary[name], self.spec[name]
    if spec["binary_inputs"]:
      xb = _to_u64(compress.pack_bits(x >= 0))
      y = (p["K"] - 2 * xor_popcount(xb, p["w64"], p["m64"])).astype(self.dtype)
    else:
      y = x.astype(self.dtype) @ p["wf"]
    return self._finish_binary(p, y)

  def _binary_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    p, spec = self.binary[name], self.spec[name]
    kh, kw = spec["kernel_size"]
    sh, sw = spec["strides"]
    groups = spec["groups"]
    b = x.shape[0]
    if groups > 1:
      xin = np.where(x >= 0, 1.0, -1.0).astype(self.dtype) if spec["binary_inputs"] else x
      w = self._full_matrix(p)  # [R, O] incl. pruned channels
      y = self._grouped(_pad(xin.astype(self.dtype), spec["padding"], 0.0), w, spec)
      p2 = dict(p, channels=None, scale=self._full_scale(p))
      return self._finish_binary(p2, y)
    if not spec["binary_inputs"]:
      xp = _pad(x.astype(self.dtype), spec["padding"], 0.0)
      pt = _windows(xp, kh, kw, sh, sw)
      ho, wo = pt.shape[1:3]
      y = pt.reshape(b * ho * wo, -1) @ p["wf"]
      return self._finish_binary(p, y.reshape(b, ho, wo, -1))
    c = x.shape[-1]
    xp = _pad(x >= 0, spec["padding"], True)  # padding packed as +1
    if c % 32 == 0:
      words = compress.pack_bits(xp)  # [B, Hp, Wp, C/32]
      pt = _windows(words, kh, kw, sh, sw)
      ho, wo = pt.shape[1:3]
      xw = _to_u64(np.ascontiguousarray(pt).reshape(b * ho * wo, -1))
    else:
      pt = _windows(xp, kh, kw, sh, sw)
      ho, wo = pt.shape[1:3]
      xw = _to_u64(compress.pack_bits(np.ascontiguousarray(pt).reshape(b * ho * wo, -1)))
    acc = p["K"] - 2 * xor_popcount(xw, p["w64"], p["m64"])  # [B*P, O_s]
    corr = self._padding_correction(name, x.shape[1:3])  # [P, O_s]
    y = (acc.reshape(b, ho * wo, -1) - corr).astype(self.dtype).reshape(b, ho, wo, -1)
    return self._finish_binary(p, y)

  def _padding_correction(self, name: str, hw) -> np.ndarray:
    """Integer contribution of the padded taps when padding is packed as +1: ``[P, O_s]``."""
    key = (name, tuple(hw))
    if key not in self._corr_cache:
      p, spec = self.binary[name], self.spec[name]
      kh, kw = spec["kernel_size"]
      sh, sw = spec["strides"]
      ind = _pad(np.zeros((1, *hw, 1), np.int64), spec["padding"], 1)
      taps = _windows(ind, kh, kw, sh, sw)[0, ..., 0]  # [Ho, Wo, kh, kw]
      per_tap = p["eff"].reshape(p["eff"].shape[0], kh * kw, -1).sum(axis=-1)  # [O_s, T]
      self._corr_cache[key] = taps.reshape(-1, kh * kw).astype(np.int64) @ per_tap.T.astype(
        np.int64
      )
    return self._corr_cache[key]

  def _full_matrix(self, p: dict) -> np.ndarray:
    """``[R, O]`` effective weights with pruned channels as zero columns."""
    if p["channels"] is None:
      return p["wf"]
    w = np.zeros((p["R"], p["O"]), self.dtype)
    w[:, p["channels"]] = p["wf"]
    return w

  def _full_scale(self, p: dict):
    if p["scale"] is None or p["channels"] is None:
      return p["scale"]
    s = np.zeros(p["O"], self.dtype)
    s[p["channels"]] = p["scale"]
    return s

  def _grouped(self, xp: np.ndarray, w: np.ndarray, spec: dict) -> np.ndarray:
    """Grouped convolution of a padded input with an ``[R, O]`` matrix (R = kh*kw*Cg)."""
    kh, kw = spec["kernel_size"]
    sh, sw = spec["strides"]
    g = spec["groups"]
    b, c = xp.shape[0], xp.shape[-1]
    cg, o = c // g, w.shape[1]
    og = o // g
    pt = _windows(xp, kh, kw, sh, sw)  # [B,Ho,Wo,kh,kw,C]
    ho, wo = pt.shape[1:3]
    pt = pt.reshape(b, ho, wo, kh * kw, g, cg)
    wg = w.reshape(kh * kw, cg, g, og)
    y = np.einsum("bhwtgc,tcgo->bhwgo", pt, wg, optimize=True)
    return y.reshape(b, ho, wo, o)

  def _real_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    spec = self.spec[name]
    k = self.real[name]["kernel"]  # HWIO
    xp = _pad(x.astype(self.dtype), spec["padding"], 0.0)
    w = k.reshape(-1, k.shape[-1])
    if spec["groups"] > 1:
      y = self._grouped(xp, w, spec)
    else:
      kh, kw = spec["kernel_size"]
      sh, sw = spec["strides"]
      pt = _windows(xp, kh, kw, sh, sw)
      b, ho, wo = pt.shape[:3]
      y = (pt.reshape(b * ho * wo, -1) @ w).reshape(b, ho, wo, -1)
    if "bias" in self.real[name]:
      y = y + self.real[name]["bias"]
    return y

  def batchnorm(self, name: str, x: np.ndarray) -> np.ndarray:
    mult, add = self.bn[name]
    return x * mult + add

  def act(self, x: np.ndarray) -> np.ndarray:
    return np.clip(x, -1.0, 1.0) if self.fields.get("binary_activations") else np.maximum(x, 0.0)

  # -- pooling -------------------------------------------------------------------------
  @staticmethod
  def max_pool2(x: np.ndarray) -> np.ndarray:
    b, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    return x[:, : 2 * ho, : 2 * wo].reshape(b, ho, 2, wo, 2, c).max(axis=(2, 4))

  @staticmethod
  def max_pool3s2(x: np.ndarray) -> np.ndarray:
    xp = _pad(x, ((1, 1), (1, 1)), -np.inf)
    return _windows(xp, 3, 3, 2, 2).max(axis=(3, 4))

  def avg_pool_same(self, x: np.ndarray, s: int) -> np.ndarray:
    """``nn.avg_pool(x, (s, s), strides=(s, s), padding='SAME', count_include_pad=False)``."""
    pads = compress._explicit_padding("SAME", x.shape[1:3], (s, s), (s, s))
    xp = _pad(x, pads, 0.0)
    ones = _pad(np.ones((1, *x.shape[1:3], 1), x.dtype), pads, 0.0)
    total = _windows(xp, s, s, s, s).sum(axis=(3, 4))
    count = _windows(ones, s, s, s, s).sum(axis=(3, 4))
    return total / count

  # -- architectures -------------------------------------------------------------------
  def _bn_act(self, name: str, x: np.ndarray) -> np.ndarray:
    return self.act(self.batchnorm(name, x))

  def _mlp(self, x):
    x = x.reshape(x.shape[0], -1)
    i = 1
    while f"fc{i}" in self.spec:
      x = self._bn_act(f"bn{i}", self.layer(f"fc{i}", x))
      i += 1
    return self.layer("out", x)

  def _vgg(self, x):
    pool_after = set(self.fields.get("pool_after", ()))
    i = 1
    while f"conv{i}" in self.spec:
      x = self.layer(f"conv{i}", x)
      if i in pool_after:
        x = self.max_pool2(x)
      x = self._bn_act(f"bn{i}", x)
      i += 1
    return self.layer("out", x.reshape(x.shape[0], -1))

  def _cnn_small(self, x):
    x = self._bn_act("bn1", self.layer("conv1", x))
    x = self._bn_act("bn2", self.max_pool2(self.layer("conv2", x)))
    x = self._bn_act("bn3", self.max_pool2(self.layer("conv3", x)))
    x = self._bn_act("bn4", self.layer("fc4", x.reshape(x.shape[0], -1)))
    return self.layer("out", x)

  def _shortcut(self, x, features: int, strides: int, prefix: str, k: int):
    in_ch = x.shape[-1]
    if strides > 1:
      x = self.avg_pool_same(x, strides)
      return self.batchnorm(f"{prefix}_down_bn", self.layer(f"{prefix}_down_conv", x))
    if in_ch == features:
      return x
    if features % in_ch == 0:
      return np.repeat(x, features // in_ch, axis=-1)
    if in_ch % features == 0:
      return x.reshape(*x.shape[:-1], features, in_ch // features).mean(axis=-1)
    return self.batchnorm(f"{prefix}_proj{k}_bn", self.layer(f"{prefix}_proj{k}", x))

  def _resnet(self, x):
    x = self._bn_act("bn1", self.layer("conv1", x))
    if not self._small_inputs_from_stem():
      x = self.max_pool3s2(x)
    convs = (1, 2, 3) if self.fields.get("bottleneck") else (1, 2)
    for s, n_blocks in enumerate(self.fields["stage_sizes"], start=1):
      for b in range(1, n_blocks + 1):
        prefix = f"stage{s}_block{b}"
        for k in convs:
          name = f"{prefix}_conv{k}"
          spec = self.spec[name]
          y = self.batchnorm(f"{prefix}_bn{k}", self.layer(name, x))
          x = self.act(y + self._shortcut(x, spec["features"], spec["strides"][0], prefix, k))
    return self.layer("out", x.mean(axis=(1, 2)))

  def _small_inputs_from_stem(self) -> bool:
    return self.spec["conv1"]["kernel_size"][0] == 3

  def _mobilenet(self, x):
    x = self._bn_act("bn1", self.layer("conv1", x))
    i = 1
    while f"block{i}_dw" in self.spec:
      y = x
      if f"block{i}_expand" in self.spec:
        y = self._bn_act(f"block{i}_expand_bn", self.layer(f"block{i}_expand", y))
      y = self._bn_act(f"block{i}_dw_bn", self.layer(f"block{i}_dw", y))
      y = self.batchnorm(f"block{i}_project_bn", self.layer(f"block{i}_project", y))
      strides = self.spec[f"block{i}_dw"]["strides"][0]
      out_ch = self.spec[f"block{i}_project"]["features"]
      x = x + y if (strides == 1 and x.shape[-1] == out_ch) else y
      i += 1
    x = self._bn_act("bn_last", self.layer("conv_last", x))
    return self.layer("out", x.mean(axis=(1, 2)))

  # -- public --------------------------------------------------------------------------
  def preprocess(self, raw: np.ndarray) -> np.ndarray:
    """Raw pixels ``[B, H, W, C]`` -> standardised float32 with the stored mean/std."""
    std = self.header.get("standardisation") or {}
    mean = np.asarray(std.get("mean", 0.0), np.float32)
    sd = np.asarray(std.get("std", 1.0), np.float32)
    return (np.asarray(raw, np.float32) - mean) / sd

  def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim == len(self.input_shape):
      images = images[None]
    outs = [
      self._forward(images[s : s + batch_size]) for s in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(outs, axis=0)

  def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.argmax(self.logits(images, batch_size), axis=-1)

  def profile(self, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """(logits, seconds per layer) of one forward pass of ``images``."""
    self.timings = {}
    try:
      out = self._forward(np.asarray(images, np.float32))
      return out, dict(self.timings)
    finally:
      self.timings = None
