"""Compiled packed engine: the numpy reference (:class:`PackedModel`) with its binary layers
replaced by numba kernels (:mod:`arsp_jax.export.kernels`).

Per binary layer, prepared once at load time from the stored signs and mask:

* **binary inputs** (``+-1``: every hidden layer of a BNN): inputs are packed to 64-bit words
  (``x >= 0``), per pixel along the channels for convolutions; weights are repacked as 64-bit
  words per kernel tap (:mod:`arsp_jax.export.words`).  An output channel keeps only its words
  that hold a kept connection, padded to the layer's largest count ``F`` (fixed fan-in: the
  ``word`` format has exactly ``F`` whole words per channel and needs no mask; an unstructured
  mask keeps the mask words and costs an extra AND).  A dense layer runs every word without a
  gather.  ``y = K - 2 * popcount((x XOR w) AND m)``, exact integers; convolutions skip the
  taps that fall in the zero padding (which contributes 0 in the Flax model).
* **real inputs** (the MLP's first layer, every layer of a ReLU network): dense layers use
  8-bit subset-sum tables per sample (``table[g, b]`` = sum of the inputs of byte ``g`` selected
  by ``b``; one lookup per weight byte instead of eight multiply-adds) up to
  :data:`LUT_MAX_BATCH` samples, float64 BLAS above; convolutions with real inputs, grouped
  convolutions and full-precision layers are the reference's numpy code.

Threads: the kernels split output channels (dense) or output rows (convolutions) over
``numba.get_num_threads()`` threads once a call has at least :data:`PARALLEL_MIN_WORDS`
word operations.  Results equal the reference's: integers exactly, real layers in float64.
"""

from __future__ import annotations

import numba
import numpy as np

from arsp_jax.export import kernels, words
from arsp_jax.export.packed import PackedModel

LUT_MAX_BATCH = 8
PARALLEL_MIN_WORDS = 1 << 16
GATHER_MAX_FRACTION = 0.75  # gather a layer's words when it keeps at most this fraction


def _threads(work: int) -> int:
  return numba.get_num_threads() if work >= PARALLEL_MIN_WORDS else 1


def gathered_words(sign_words: np.ndarray, mask_words: np.ndarray, valid: np.ndarray) -> dict:
  """Per output channel the words with a kept connection, padded to the largest count.

  ``sign_words``/``mask_words`` ``[O, N]`` uint64, ``valid [N]`` the bits of each word that
  hold a connection.  Returns ``{"w", "m", "idx", "has_idx", "has_mask"}``: ``w``/``m``
  ``[O, F]``, ``idx [O, F]`` the source word of each entry (padding entries have mask 0);
  ``has_mask`` is False when every entry keeps all its connections (then the AND is skipped:
  the padding bits of inputs and weights are 0).  When a layer keeps most of its words every
  word is kept in place (no gather).
  """
  o, n = sign_words.shape
  nz = mask_words != 0
  f = int(nz.sum(axis=1).max()) if o else 0
  if f > GATHER_MAX_FRACTION * n or f == 0:
    idx = np.broadcast_to(np.arange(n), (o, n))
    w, m, has_idx = sign_words, mask_words, False
  else:
    order = np.argsort(~nz, axis=1, kind="stable")[:, :f]  # kept words first, in order
    idx = order
    w = np.take_along_axis(sign_words, idx, axis=1)
    m = np.take_along_axis(mask_words, idx, axis=1)
    m = np.where(np.take_along_axis(nz, idx, axis=1), m, np.uint64(0))
    has_idx = True
  full = valid[idx]
  return {
    "w": np.ascontiguousarray(w),
    "m": np.ascontiguousarray(m),
    "idx": np.ascontiguousarray(idx, dtype=np.int64),
    "has_idx": has_idx,
    "has_mask": bool(np.any(m != full)),
  }


class CompiledModel(PackedModel):
  """An exported model run with the compiled kernels; see the module docstring."""

  def __init__(self, loaded: dict, dtype=np.float64):
    super().__init__(loaded, dtype)
    self.fast = {k: self._prepare_fast(k, p) for k, p in self.binary.items()}

  # -- preparation ---------------------------------------------------------------------
  def _prepare_fast(self, name: str, p: dict) -> dict | None:
    spec = self.spec[name]
    if spec.get("groups", 1) > 1:
      return None
    if not spec["binary_inputs"] and spec["type"] == "BinaryConv":
      return None
    eff = p["eff"]  # [O_s, R] +1/-1/0
    o_s, o = eff.shape[0], p["O"]
    common = {
      "scale": np.ones(o_s) if p["scale"] is None else np.asarray(p["scale"], np.float64),
      "cols": np.arange(o_s) if p["channels"] is None else np.asarray(p["channels"], np.int64),
      "bias": np.zeros(o) if p["bias"] is None else np.asarray(p["bias"], np.float64),
      "pruned_channels": p["channels"] is not None,
    }
    if not spec["binary_inputs"]:
      return {**common, **self._prepare_lut(eff)}
    in_ch = p["shape"][-2]
    taps = words.tap_view(eff, in_ch)  # [O_s, T, I]
    sw = words.pack_taps(taps > 0).reshape(o_s, -1)
    mw = words.pack_taps(taps != 0).reshape(o_s, -1)
    valid = words.pack_taps(np.ones(taps.shape[1:], bool)).reshape(-1)
    g = gathered_words(sw, mw, valid)
    if spec["type"] == "BinaryDense":
      return {**common, **g, "kbits": (eff != 0).sum(1).astype(np.int64)}
    iw = -(-in_ch // words.WORD_BITS)
    kw = spec["kernel_size"][1]
    tap = g["idx"] // iw
    return {
      **common,
      **g,
      "dy": np.ascontiguousarray(tap // kw),
      "dx": np.ascontiguousarray(tap % kw),
      "wc": np.ascontiguousarray(g["idx"] % iw),
      "kword": np.bitwise_count(g["m"]).astype(np.int64),
      "iw": iw,
    }

  @staticmethod
  def _prepare_lut(eff: np.ndarray) -> dict:
    pos = np.packbits(eff > 0, axis=1, bitorder="little")  # [O_s, G]
    neg = np.packbits(eff < 0, axis=1, bitorder="little")
    g = pos.shape[1]
    if not np.any(eff == 0):
      gidx = np.broadcast_to(np.arange(g), pos.shape)
      return {"pos": pos, "neg": neg, "gidx": np.ascontiguousarray(gidx), "has_neg": False}
    used = (pos | neg) != 0
    f = max(1, int(used.sum(axis=1).max()))
    order = np.argsort(~used, axis=1, kind="stable")[:, :f]
    keep = np.take_along_axis(used, order, axis=1)
    return {
      "pos": np.where(keep, np.take_along_axis(pos, order, axis=1), 0).astype(np.uint8),
      "neg": np.where(keep, np.take_along_axis(neg, order, axis=1), 0).astype(np.uint8),
      "gidx": np.ascontiguousarray(order, dtype=np.int64),
      "has_neg": True,
    }

  # -- layers --------------------------------------------------------------------------
  def _output(self, f: dict, shape) -> np.ndarray:
    if f["pruned_channels"]:  # pruned channels output their bias
      return np.broadcast_to(f["bias"], shape).copy()
    return np.empty(shape, np.float64)

  def binary_dense(self, name: str, x: np.ndarray) -> np.ndarray:
    f = self.fast.get(name)
    if f is None or ("pos" in f and x.shape[0] > LUT_MAX_BATCH):
      return super().binary_dense(name, x)
    x = np.ascontiguousarray(x, np.float64).reshape(x.shape[0], -1)
    n = x.shape[0]
    out = self._output(f, (n, f["bias"].shape[0]))
    if "pos" in f:
      table = np.empty((-(-x.shape[1] // 8), 256), np.float64)
      args = (f["pos"], f["neg"], f["gidx"], f["has_neg"], f["scale"], f["cols"], f["bias"])
      kernels.lut_dense_range(x, *args, out, table, 0, f["pos"].shape[0])
      return out
    xw = self._pack(x)
    o_s, width = f["w"].shape
    chunks = _threads(n * o_s * width)
    args = (f["w"], f["m"], f["idx"], f["kbits"], f["scale"], f["cols"], f["bias"], out)
    if chunks > 1:
      kernels.bdense_par(xw, *args, f["has_mask"], f["has_idx"], chunks)
    else:
      kernels.bdense_range(xw, *args, f["has_mask"], f["has_idx"], 0, o_s)
    return out

  @staticmethod
  def _pack(x2d: np.ndarray) -> np.ndarray:
    n, r = x2d.shape
    out = np.empty((n, -(-r // words.WORD_BITS)), np.uint64)
    chunks = _threads(n * r // 8)
    if chunks > 1:
      kernels.pack_rows_par(x2d, out, chunks)
    else:
      kernels.pack_rows_range(x2d, out, 0, n)
    return out

  def binary_conv(self, name: str, x: np.ndarray) -> np.ndarray:
    f = self.fast.get(name)
    if f is None:
      return super().binary_conv(name, x)
    spec = self.spec[name]
    b, h, w, c = x.shape
    xb = self._pack(np.ascontiguousarray(x, np.float64).reshape(-1, c)).reshape(b, h, w, -1)
    kh, kw = spec["kernel_size"]
    (pt, pb), (pl, pr) = spec["padding"]
    sh, sw = spec["strides"]
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    out = self._output(f, (b, ho, wo, f["bias"].shape[0]))
    geom = np.array([sh, sw, pt, pl], np.int64)
    o_s, width = f["w"].shape
    args = (f["w"], f["m"], f["dy"], f["dx"], f["wc"], f["kword"], geom)
    args += (f["scale"], f["cols"], f["bias"], out, f["has_mask"])
    chunks = _threads(b * ho * wo * o_s * width)
    if chunks > 1:
      kernels.bconv_par(xb, *args, min(chunks * 4, b * ho))
    else:
      kernels.bconv_range(xb, *args, 0, b * ho)
    return out
