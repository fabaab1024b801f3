"""Compression, size accounting and export of (pruned) binary networks.

Everything in this module runs on numpy alone; :func:`describe_model` (from
:mod:`arsp_jax.export.describe`, which records the architecture by running the model once)
imports Flax lazily.  ``load`` therefore works in a process without jax/flax.

Conventions
-----------
* A binary kernel (HWIO for convolutions, [in, out] for dense layers) is viewed as a matrix
  ``[O, R]`` with ``R = kh * kw * I/groups`` (the reduction axis, flattened in (kh, kw, I)
  order).  Its effective weight is ``mask * sign(w)`` with ``sign(0) = +1``.
* Bit packing: 32 bits per uint32 word along the reduction axis, bit ``j`` of word ``i`` is
  element ``32 * i + j`` (LSB first), rows padded with zero bits: ``[O, ceil(R / 32)]``.  When
  ``I/groups`` is a multiple of 32 the words never straddle a kernel tap, which is the layout
  of BNN inference engines (packing along the input-channel axis).
* Each binary layer is stored in the cheapest exact form:

  ``dense``    no connection pruned: packed signs ``[O, W]``, no mask;
  ``channel``  whole output channels pruned (and nothing else): packed signs of the kept
               channels only ``[O_kept, W]`` plus the kept channels as a packed O-bit bitmap;
  ``word``     whole 64-bit words per output channel (see :mod:`arsp_jax.export.words`), the
               same number ``F`` in every channel (fixed fan-in): per channel the ``F``
               kept word indices (uint16) and their ``F`` sign words (64 bits each, as
               uint32 pairs);
  ``sparse``   unstructured: the signs of the kept weights only (one bit each, in row-major
               ``[O, R]`` order, packed) plus the mask, encoded with whichever is smallest
               of a raw bitmap and Golomb-Rice codes of the run lengths between kept (or
               between pruned) connections (i.e. index deltas).

* Full-precision layers are stored as float32; batchnorm is folded into a per-channel
  multiplier and bias (``y = x * mult + add``); XNOR scales are float32 per output channel.

The exported file is an ``.npz`` (uncompressed) whose ``__header__`` entry is the UTF-8 JSON
header (architecture, layer table, encodings) as uint8 bytes.  Sizes reported as *encoded*
are the bytes of the arrays in that file, i.e. what the encoder actually produced.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Mapping

import numpy as np

from arsp_jax.errors import ExportError
from arsp_jax.export import shrink
from arsp_jax.export import words as word_layout
from arsp_jax.export.bits import (
  decode_mask,
  encode_mask,
  entropy_bound_bits,
  pack_bits,
  pack_stream,
  unpack_bits,
)

# Re-exported: callers record the architecture through this module.
from arsp_jax.export.describe import describe_model, scale_layer_names  # noqa: F401

FORMAT = "arsp-packed-bnn"
VERSION = 1
BN_EPS = 1e-5


# --------------------------------------------------------------------------- layer encoding


def kernel_matrix(kernel: np.ndarray) -> np.ndarray:
  """``[..., I, O]`` kernel -> ``[O, R]`` matrix (reduction flattened in (kh, kw, I) order)."""
  kernel = np.asarray(kernel)
  return kernel.reshape(-1, kernel.shape[-1]).T


def matrix_kernel(matrix: np.ndarray, shape) -> np.ndarray:
  """Inverse of :func:`kernel_matrix`."""
  return np.asarray(matrix).T.reshape(shape)


def xnor_alpha(kernel: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """Per-output-channel XNOR scale over the kept connections (float32, as binary.py)."""
  w = np.abs(np.asarray(kernel, np.float64)).reshape(-1, kernel.shape[-1])
  if mask is None:
    return (w.mean(axis=0)).astype(np.float32)
  m = np.asarray(mask, np.float64).reshape(-1, kernel.shape[-1])
  return ((w * m).sum(axis=0) / np.maximum(m.sum(axis=0), 1.0)).astype(np.float32)


def encode_binary(kernel: np.ndarray, mask: np.ndarray | None) -> tuple[dict, dict]:
  """(meta, arrays) of one binary kernel in its cheapest exact storage form."""
  kernel = np.asarray(kernel, np.float32)
  shape = list(kernel.shape)
  signs = kernel_matrix(kernel) >= 0  # [O, R]
  o, r = signs.shape
  m = np.ones_like(signs) if mask is None else kernel_matrix(np.asarray(mask)) > 0
  meta: dict[str, Any] = {"shape": shape, "O": int(o), "R": int(r), "kept": int(m.sum())}
  arrays: dict[str, np.ndarray] = {}
  row_kept = m.sum(axis=1)
  if m.all():
    meta["encoding"] = "dense"
    arrays["signs"] = pack_bits(signs)
  elif np.all((row_kept == 0) | (row_kept == r)):
    kept = row_kept == r
    meta["encoding"] = "channel"
    meta["kept_channels"] = int(kept.sum())
    arrays["signs"] = pack_bits(signs[kept])
    arrays["channels"] = pack_stream(kept)
  elif (idx := word_layout.word_structure(m, shape[-2])) is not None:
    meta["encoding"] = "word"
    meta["fan_in_words"] = int(idx.shape[1])
    taps = word_layout.pack_taps(word_layout.tap_view(signs, shape[-2]))  # [O, T, Iw]
    kept = np.take_along_axis(taps.reshape(o, -1), idx, axis=1)  # [O, F] uint64
    arrays["signs"] = kept.astype("<u8").view("<u4").astype(np.uint32)  # [O, 2F]
    arrays["words"] = idx.astype(np.uint16)
  else:
    meta["encoding"] = "sparse"
    arrays["signs"] = pack_stream(signs[m])
    code = encode_mask(m)
    meta["mask"] = {k: code[k] for k in ("method", "n", "count", "k", "nbits")}
    arrays["mask"] = code["words"]
  return meta, arrays


def decode_binary(meta: dict, arrays: Mapping[str, np.ndarray]) -> dict:
  """Packed form of a stored binary kernel for inference.

  Returns ``{"signs": uint32 [O_s, W], "mask": uint32 [O_s, W] or None, "channels": int
  indices of the stored output channels or None, "O", "R"}`` with ``O_s`` the stored
  (kept) output channels.
  """
  o, r, enc = int(meta["O"]), int(meta["R"]), meta["encoding"]
  out = {"O": o, "R": r, "mask": None, "channels": None, "encoding": enc}
  if enc == "dense":
    out["signs"] = np.asarray(arrays["signs"], np.uint32).reshape(o, -1)
  elif enc == "channel":
    kept = unpack_bits(arrays["channels"], o)
    out["channels"] = np.flatnonzero(kept)
    out["signs"] = np.asarray(arrays["signs"], np.uint32).reshape(int(kept.sum()), -1)
  elif enc == "word":
    out["signs"], out["mask"] = _decode_words(meta, arrays)
    out["fan_in_words"] = int(meta["fan_in_words"])
  elif enc == "sparse":
    mm = meta["mask"]
    m = decode_mask(
      mm["method"], mm["n"], mm["count"], mm["k"], mm["nbits"], arrays["mask"]
    ).reshape(o, r)
    signs = np.zeros((o, r), bool)
    signs[m] = unpack_bits(arrays["signs"], int(m.sum()))
    out["signs"] = pack_bits(signs)
    out["mask"] = pack_bits(m)
  else:
    raise ExportError(f"unknown encoding {enc!r}")
  return out


def _decode_words(meta: dict, arrays: Mapping[str, np.ndarray]) -> tuple:
  """Flat packed (signs, mask) ``[O, W]`` of a ``word``-encoded kernel."""
  o, r, i = int(meta["O"]), int(meta["R"]), int(meta["shape"][-2])
  iw = -(-i // word_layout.WORD_BITS)
  idx = np.asarray(arrays["words"], np.int64).reshape(o, -1)
  kept = np.ascontiguousarray(np.asarray(arrays["signs"], np.uint32).reshape(o, -1))
  sign_words = np.zeros((o, (r // i) * iw), np.uint64)
  np.put_along_axis(sign_words, idx, kept.astype("<u4").view("<u8"), axis=1)
  mask_words = np.zeros_like(sign_words)
  np.put_along_axis(mask_words, idx, np.uint64(0xFFFFFFFFFFFFFFFF), axis=1)
  tap = lambda w: word_layout.unpack_taps(w.reshape(o, r // i, iw), i).reshape(o, r)  # noqa: E731
  mask = tap(mask_words)
  return pack_bits(tap(sign_words) & mask), pack_bits(mask)


def effective_matrix(dec: dict) -> np.ndarray:
  """The full ``[O, R]`` effective weight (+1/-1/0, float32) of a decoded binary layer."""
  o, r = dec["O"], dec["R"]
  w = np.where(unpack_bits(dec["signs"], r), 1.0, -1.0).astype(np.float32)
  if dec["mask"] is not None:
    w *= unpack_bits(dec["mask"], r)
  if dec["channels"] is not None:
    full = np.zeros((o, r), np.float32)
    full[dec["channels"]] = w
    w = full
  return w


# --------------------------------------------------------------------------- size accounting


def _flatten(tree: Any, prefix: str = "") -> dict:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
  elif tree is not None:
    out[prefix[:-1]] = np.asarray(tree)
  return out


def _nbits(arrays: Mapping[str, np.ndarray]) -> int:
  return int(sum(8 * np.asarray(a).nbytes for a in arrays.values()))


def encode_model(params: Any, masks: Any, batch_stats: Any = None, scale_layers=()) -> dict:
  """Encodes every layer: ``{"binary": {layer: (meta, arrays)}, "real": {...}, "bn": {...}}``.

  ``params``/``masks``/``batch_stats`` are the Flax collections (nested dicts of arrays).
  A kernel is binary when it has a mask; a binary layer's arrays hold its encoded kernel, its
  XNOR scale (layers in ``scale_layers``, over the stored output channels) and its bias.
  Batchnorm layers (those with ``mean``/``var`` statistics) are folded into ``mult``/``add``.
  """
  fp, fm, fb = _flatten(params), _flatten(masks or {}), _flatten(batch_stats or {})
  binary, real, bn = {}, {}, {}
  bn_layers = {p.rsplit("/", 1)[0] for p in fb if p.endswith("/mean")}
  binary_layers = {p.rsplit("/", 1)[0] for p in fm if p.endswith("/kernel")}
  for path in sorted(fp):
    layer, leaf = path.rsplit("/", 1) if "/" in path else ("", path)
    if layer in bn_layers or layer in binary_layers:
      continue
    real.setdefault(layer, {})[leaf] = np.asarray(fp[path], np.float32)
  for layer in sorted(binary_layers):
    kernel, mask = fp[f"{layer}/kernel"], fm[f"{layer}/kernel"]
    meta, arrays = encode_binary(kernel, mask)
    if layer in scale_layers:
      alpha = xnor_alpha(kernel, mask)
      if meta["encoding"] == "channel":
        alpha = alpha[unpack_bits(arrays["channels"], meta["O"])]
      arrays["scale"] = alpha
    if f"{layer}/bias" in fp:
      arrays["bias"] = np.asarray(fp[f"{layer}/bias"], np.float32)
    binary[layer] = (meta, arrays)
  for layer in sorted(bn_layers):
    mean = np.asarray(fb[f"{layer}/mean"], np.float32)
    var = np.asarray(fb[f"{layer}/var"], np.float32)
    scale = fp.get(f"{layer}/scale", np.ones_like(mean)).astype(np.float32)
    bias = fp.get(f"{layer}/bias", np.zeros_like(mean)).astype(np.float32)
    mult, add = fold_batchnorm(mean, var, scale, bias)
    bn[layer] = {"mult": mult, "add": add}
  return {"binary": binary, "real": real, "bn": bn}


def fold_batchnorm(mean, var, scale, bias, eps: float = BN_EPS):
  """``BN(x) = (x - mean) * scale / sqrt(var + eps) + bias = x * mult + add`` (float32)."""
  v = np.asarray(var, np.float32) + np.float32(eps)  # as Flax: float32 add
  mult = np.asarray(scale, np.float64) / np.sqrt(v.astype(np.float64))
  add = np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * mult
  return mult.astype(np.float32), add.astype(np.float32)


def size_summary(
  params: Any, masks: Any, batch_stats: Any = None, scale_layers=(), encoded: dict | None = None
) -> dict:
  """Encoded sizes (bits) of the exported form, per binary layer and in total.

  ``encoded_bits``: every array of the export (binary layers as encoded, with their XNOR
  scales and biases; full-precision layers at 32 bits; folded batchnorm at 2 x 32 bits per
  channel), the JSON header excluded.  ``binary_encoded_bits`` / ``binary_bits_per_weight``:
  the binary kernels alone (signs + mask/channel bitmap), per original connection.  ``layers``:
  per binary layer its encoding, bits, bits per weight and the entropy bound
  ``kept + n H(d)``.
  """
  enc = encoded if encoded is not None else encode_model(params, masks, batch_stats, scale_layers)
  fm = _flatten(masks or {})
  layers = {}
  kernel_bits = binary_n = other_bits = 0
  for name, (meta, arrays) in enc["binary"].items():
    kbits = _nbits({k: v for k, v in arrays.items() if k in ("signs", "channels", "mask", "words")})
    other_bits += _nbits(arrays) - kbits
    n = meta["O"] * meta["R"]
    m = fm.get(f"{name}/kernel")
    layers[name] = {
      "encoding": meta["encoding"],
      "bits": kbits,
      "connections": n,
      "kept": meta["kept"],
      "bits_per_weight": kbits / n if n else 0.0,
      "entropy_bound_bits": (
        meta["kept"] + entropy_bound_bits(m) if meta["kept"] < n else float(n)
      ),
      "mask_method": meta.get("mask", {}).get("method"),
    }
    kernel_bits += kbits
    binary_n += n
  real_bits = sum(_nbits(v) for v in enc["real"].values())
  bn_bits = sum(_nbits(v) for v in enc["bn"].values())
  total = kernel_bits + other_bits + real_bits + bn_bits
  return {
    "encoded_bits": int(total),
    "binary_encoded_bits": int(kernel_bits),
    "binary_extra_bits": int(other_bits),
    "real_bits": int(real_bits),
    "bn_folded_bits": int(bn_bits),
    "binary_bits_per_weight": kernel_bits / binary_n if binary_n else 0.0,
    "layers": layers,
  }


# --------------------------------------------------------------------------- export / load


def export(
  path: str,
  params: Any,
  masks: Any,
  batch_stats: Any,
  arch: dict,
  extra: dict | None = None,
  shrink_inputs: bool = True,
) -> dict:
  """Writes the self-contained export file; returns its header (with sizes).

  ``arch`` comes from :func:`describe_model`; ``extra`` (JSON-able) is stored in the header
  (e.g. dataset name, input standardisation, accuracy).  ``shrink_inputs``: the layer after a
  channel-pruned one drops the inputs of the pruned channels (:mod:`arsp_jax.export.shrink`).
  """
  scale_layers = {l["name"] for l in arch["layers"] if l.get("scale")}
  enc = encode_model(params, masks, batch_stats, scale_layers)
  if shrink_inputs:
    shrink.shrink_inputs(enc, arch, params, masks, encode_binary)
  arrays: dict[str, np.ndarray] = {}
  layers: dict[str, dict] = {}
  for name, (meta, arr) in enc["binary"].items():
    layers[name] = {"kind": "binary", **meta}
    for k, a in arr.items():
      arrays[f"{name}/{k}"] = a
  for name, arr in enc["real"].items():
    layers[name] = {"kind": "real", "shape": list(arr["kernel"].shape) if "kernel" in arr else None}
    for k, a in arr.items():
      arrays[f"{name}/{k}"] = a
  for name, arr in enc["bn"].items():
    layers[name] = {"kind": "bn"}
    for k, a in arr.items():
      arrays[f"{name}/{k}"] = a
  header = {
    "format": FORMAT,
    "version": VERSION,
    "arch": arch,
    "layers": layers,
    "payload_bits": _nbits(arrays),
    "sizes": size_summary(None, masks, encoded=enc),
    **(extra or {}),
  }
  hbytes = json.dumps(header, sort_keys=True, default=_json_default).encode("utf-8")
  arrays["__header__"] = np.frombuffer(hbytes, np.uint8)
  d = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(d):
    raise ExportError(f"cannot write {path}: directory {d} does not exist.")
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  tmp = os.path.join(d, f".{os.path.basename(path)}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(buf.getvalue())
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise ExportError(f"cannot write {path}: {e.strerror or e}.") from None
  header["file_bytes"] = os.path.getsize(path)
  header["header_bytes"] = len(hbytes)
  return header


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o)}")


def load(path: str) -> dict:
  """Reads an export file with numpy only.

  Returns ``{"header": dict, "binary": {name: decoded (see decode_binary) + "scale"/"bias"},
  "real": {name: {"kernel", "bias"?}}, "bn": {name: {"mult", "add"}}}``.
  """
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ExportError(f"cannot read {path}: {e}") from None
  with z:
    arrays = {k: z[k] for k in z.files}
  if "__header__" not in arrays:
    raise ExportError(f"{path} is not an {FORMAT} file (no header).")
  header = json.loads(arrays.pop("__header__").tobytes().decode("utf-8"))
  if header.get("format") != FORMAT or header.get("version") != VERSION:
    raise ExportError(
      f"{path}: unsupported format {header.get('format')!r} version {header.get('version')!r}."
    )
  out: dict[str, Any] = {"header": header, "binary": {}, "real": {}, "bn": {}}
  for name, meta in header["layers"].items():
    own = {k[len(name) + 1 :]: v for k, v in arrays.items() if k.startswith(name + "/")}
    if meta["kind"] == "binary":
      dec = decode_binary(meta, own)
      for k in ("scale", "bias", "input_const"):
        if k in own:
          dec[k] = own[k]
      dec["compact"] = bool(meta.get("compact"))
      dec["shape"] = meta["shape"]
      out["binary"][name] = dec
    else:
      out[meta["kind"]][name] = own
  return out
