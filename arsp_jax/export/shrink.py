"""Channel pruning that shrinks the next layer: drop the inputs that follow pruned channels.

A pruned output channel ``j`` of a binary layer ``A`` outputs a constant (its bias, or 0),
so after ``A``'s batchnorm (and max pooling, which keeps constants) and activation the next
layer ``B`` sees the constant ``a_j = act(bias_j * mult_j + add_j)`` in input channel ``j`` --
``sign`` of it when ``B`` binarises its inputs -- at every position inside the image and 0 in
``B``'s zero padding.  The export therefore:

* stores ``A`` with its kept output channels only and marks it ``compact`` (the engines do not
  place the pruned channels back), and its batchnorm (and bias) for the kept channels only;
* stores ``B``'s kernel without the dropped input channels (re-encoded: it may become dense)
  and the dropped channels' contribution as ``input_const``: per output channel for a dense
  ``B`` (``sum_{j dropped, positions} w * a_j``), per kernel tap ``[T, O]`` for a
  convolution (the engines sum the taps inside the image at each output position).  With
  binary inputs and weights these are exact integers, stored as such (int8/int16/int32, the
  narrowest that holds them; float32 otherwise).  ``B``'s XNOR scale is kept as trained
  (it is per output channel, over the original kept connections).

Applied where the export's graph is sequential between the two layers (:func:`chains`: in the
``mlp``, ``cnn_small`` and ``vgg_small`` models); residual streams keep their width.
"""

from __future__ import annotations

import numpy as np

from arsp_jax.export import graph


def chains(arch: dict) -> list[tuple[str, str, str]]:
  """(layer, its batchnorm, next layer) triples where the graph is ``a -> [max pool] -> bn ->
  act -> [reshape] -> b`` with every tensor on the way read once (a residual stream is read
  twice: it keeps its width) and ``a``/``b`` ungrouped, ``a`` binary; in graph order."""
  if "error" in arch.get("graph", {"error": ""}):
    return []  # no graph recorded: nothing known to be sequential
  spec = {l["name"]: l for l in arch["layers"]}
  ops = graph.ops_of(arch)
  readers = graph.consumers(ops)
  out = []
  for op in ops:
    if op.kind != "layer" or not spec[op.name].get("binary") or spec[op.name].get("groups", 1) > 1:
      continue
    path = _follow(ops, readers, op.out, ("window_max",))
    if path is None or path.kind != "layer" or spec[path.name]["type"] != "BatchNorm":
      continue
    bn = path.name
    act = _follow(ops, readers, path.out, ())
    if act is None or act.kind not in ("clip", "relu"):
      continue
    b = _follow(ops, readers, act.out, ("reshape",))
    if b is None or b.kind != "layer" or spec[b.name]["type"] not in _NEXT_TYPES:
      continue
    if spec[b.name].get("groups", 1) == 1:
      out.append((op.name, bn, b.name))
  return out


def _follow(ops, readers, t: int, skip: tuple):
  """The op reading tensor ``t`` after any ops of kinds ``skip`` (each tensor read once)."""
  while True:
    r = readers.get(t, [])
    if len(r) != 1:
      return None
    op = ops[r[0]]
    if op.kind not in skip:
      return op
    if op.kind == "window_max" and op.params["window"] != [1, 2, 2, 1]:
      return None  # only max pooling over 2x2 windows keeps the constants at the borders
    t = op.out


_NEXT_TYPES = ("BinaryDense", "BinaryConv", "Dense")


def input_constants(enc: dict, a: str, bn: str, spec_b: dict, act: str) -> np.ndarray:
  """Per dropped-or-kept input channel of ``b``, the constant a pruned channel of ``a``
  feeds it (``act``: ``sign``, ``clip`` or ``relu``)."""
  _, arrays = enc["binary"][a]
  mult = np.asarray(enc["bn"][bn]["mult"], np.float64)
  add = np.asarray(enc["bn"][bn]["add"], np.float64)
  bias = np.asarray(arrays.get("bias", np.zeros_like(mult)), np.float64)
  c = bias * mult + add
  if act == "sign":
    return np.where(c >= 0, 1.0, -1.0)
  return np.clip(c, -1.0, 1.0) if act == "clip" else np.maximum(c, 0.0)


def shrink_inputs(enc: dict, arch: dict, params: dict, masks: dict, encode_binary) -> dict:
  """Applies the shrink in place to ``enc`` (see :func:`arsp_jax.export.compress.encode_model`);
  returns ``{layer: dropped input channels}``."""
  spec = {l["name"]: l for l in arch["layers"]}
  bnn = bool(arch["fields"].get("binary_activations"))
  dropped = {}
  for a, bn, b in chains(arch):
    mask_a = np.asarray(masks[a]["kernel"]).reshape(-1, spec[a]["features"])
    kept = mask_a.any(axis=0)
    if kept.all() or not kept.any() or not np.all(mask_a[:, kept]):
      continue  # not channel-pruned (or pruned within channels)
    binary_b = spec[b].get("binary", False)
    act = ("sign" if spec[b].get("binary_inputs") else "clip") if bnn else "relu"
    consts = input_constants(enc, a, bn, spec[b], act)
    _compact_output(enc, a, bn, kept)
    kernel = np.asarray(params[b]["kernel"], np.float64)
    mask_b = np.asarray(masks[b]["kernel"]) if binary_b else None
    weff = np.where(kernel >= 0, 1.0, -1.0) * mask_b if binary_b else kernel
    c, o = kept.shape[0], kernel.shape[-1]
    w3 = weff.reshape(-1, c, o)  # [positions or taps, C, O]
    const = np.einsum("pco,c->po", w3[:, ~kept], consts[~kept])
    if spec[b]["type"] != "BinaryConv":
      const = const.sum(axis=0)  # every position is inside the input: one constant
    new_kernel = kernel.reshape(-1, c, o)[:, kept].reshape(*kernel.shape[:-2], -1, o)
    if binary_b:
      new_mask = mask_b.reshape(-1, c, o)[:, kept].reshape(new_kernel.shape)
      _reencode(enc, b, encode_binary(new_kernel.astype(np.float32), new_mask))
      enc["binary"][b][1]["input_const"] = exact_ints(const)
    else:
      enc["real"][b]["kernel"] = new_kernel.astype(np.float32)
      enc["real"][b]["input_const"] = const.astype(np.float32)
    dropped[b] = int((~kept).sum())
  return dropped


def exact_ints(const: np.ndarray) -> np.ndarray:
  """``const`` in the narrowest integer type that holds it exactly (sums of +-1 products, with
  binary inputs and weights), else float32; the engines read either as float64."""
  if np.all(np.rint(const) == const):
    for dtype in (np.int8, np.int16, np.int32):
      info = np.iinfo(dtype)
      if const.size == 0 or (const.min() >= info.min and const.max() <= info.max):
        return const.astype(dtype)
  return const.astype(np.float32)


def _compact_output(enc: dict, a: str, bn: str, kept: np.ndarray) -> None:
  meta, arrays = enc["binary"][a]
  meta["compact"] = True
  if "bias" in arrays:
    arrays["bias"] = arrays["bias"][kept]
  enc["bn"][bn] = {k: v[kept] for k, v in enc["bn"][bn].items()}


def _reencode(enc: dict, name: str, new: tuple[dict, dict]) -> None:
  """Replaces a binary layer's kernel encoding, keeping its scale, bias and flags."""
  old_meta, old_arrays = enc["binary"][name]
  meta, arrays = new
  for k in ("scale", "bias"):
    if k in old_arrays:
      arrays[k] = old_arrays[k]
  if old_meta.get("compact"):
    meta["compact"] = True
  meta["input_channels_dropped"] = True
  enc["binary"][name] = (meta, arrays)
