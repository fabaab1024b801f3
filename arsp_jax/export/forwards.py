"""What every packed engine shares: the stored model's tables, the forward pass (the export's
graph, :mod:`arsp_jax.export.graph`, run op by op: no per-model code), timing and the public API.

An engine subclasses :class:`EngineBase` and implements ``prepare_binary(name, decoded)``,
``binary_dense(name, x)``, ``binary_conv(name, x)`` and ``real_conv(name, x)``; it may
replace ``forward`` (the compiled engine runs a plan of fused ops built from the same graph).
"""

from __future__ import annotations

import time

import numpy as np

from arsp_jax.errors import ExportError
from arsp_jax.export import graph


class EngineBase:
  """An exported model ready to run (see :mod:`arsp_jax.export.packed`)."""

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
    self.timings: dict[str, float] | None = None
    self.ops = graph.ops_of(arch)
    self.consts = graph.constants(self.ops)
    self.last_use = graph.last_use(self.ops)
    self.binary = {k: self.prepare_binary(k, d) for k, d in loaded["binary"].items()}

  # -- layers --------------------------------------------------------------------------
  def layer(self, name: str, x: np.ndarray) -> np.ndarray:
    if self.timings is None:
      return self.run_layer(name, x)
    t = time.perf_counter()
    out = self.run_layer(name, x)
    self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
    return out

  def run_layer(self, name: str, x: np.ndarray) -> np.ndarray:
    t = self.spec[name]["type"]
    if t == "BinaryDense":
      return self.binary_dense(name, x)
    if t == "Dense":
      real = self.real[name]
      y = x.astype(self.dtype) @ real["kernel"]
      for extra in ("bias", "input_const"):  # input_const: inputs dropped by channel pruning
        if extra in real:
          y = y + real[extra]
      return y
    if t == "BinaryConv":
      return self.binary_conv(name, x)
    return self.real_conv(name, x)

  def batchnorm(self, name: str, x: np.ndarray) -> np.ndarray:
    mult, add = self.bn[name]
    return x * mult + add

  # -- the graph -----------------------------------------------------------------------
  def forward(self, x):
    """The graph's ops in order on images ``x`` (tensors freed after their last use)."""
    env = dict(self.consts)
    env[0] = x
    for k, op in enumerate(self.ops):
      if op.kind == "output":
        return env[op.ins[0]]
      if op.params.get("const"):
        continue
      env[op.out] = self.run_op(op, env)
      for t in op.ins:
        if self.last_use.get(t) == k and t not in self.consts:
          del env[t]
    raise ExportError("the graph has no output op")

  def run_op(self, op: graph.Op, env: dict):
    if op.kind != "layer":
      return graph.run_array_op(op, env)
    x = env[op.ins[0]]
    if self.spec[op.name]["type"] == "BatchNorm":
      return self.batchnorm(op.name, x)
    return self.layer(op.name, x)

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
    if images.shape[0] <= batch_size:  # one chunk: no copy into a concatenation
      return self.forward(images)
    outs = [self.forward(images[s : s + batch_size]) for s in range(0, images.shape[0], batch_size)]
    return np.concatenate(outs, axis=0)

  def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.argmax(self.logits(images, batch_size), axis=-1)

  def profile(self, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """(logits, seconds per layer) of one forward pass of ``images``."""
    self.timings = {}
    try:
      out = self.forward(np.asarray(images, np.float32))
      return out, dict(self.timings)
    finally:
      self.timings = None
