"""What every packed engine shares: the stored model's tables, the architectures' forward
passes (in terms of ``layer``/``batchnorm``/``act``), pooling, timing and the public API.

An engine subclasses :class:`EngineBase` and implements ``prepare_binary(name, decoded)``,
``binary_dense(name, x)``, ``binary_conv(name, x)`` and ``real_conv(name, x)``.
"""

from __future__ import annotations

import time

import numpy as np

from arsp_jax.errors import ExportError
from arsp_jax.export import arrays


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
    forwards = {
      "mlp": self.forward_mlp,
      "cnn_small": self.forward_cnn_small,
      "vgg_small": self.forward_vgg,
      "resnet18": self.forward_resnet,
      "resnet50": self.forward_resnet,
      "mobilenet_v2": self.forward_mobilenet,
    }
    if self.model not in forwards:
      raise ExportError(f"the packed engine does not know model {self.model!r}")
    self.forward = forwards[self.model]
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

  def act(self, x: np.ndarray) -> np.ndarray:
    return np.clip(x, -1.0, 1.0) if self.fields.get("binary_activations") else np.maximum(x, 0.0)

  def bn_act(self, name: str, x: np.ndarray) -> np.ndarray:
    return self.act(self.batchnorm(name, x))

  # -- architectures -------------------------------------------------------------------
  def forward_mlp(self, x):
    x = x.reshape(x.shape[0], -1)
    i = 1
    while f"fc{i}" in self.spec:
      x = self.bn_act(f"bn{i}", self.layer(f"fc{i}", x))
      i += 1
    return self.layer("out", x)

  def forward_vgg(self, x):
    pool_after = set(self.fields.get("pool_after", ()))
    i = 1
    while f"conv{i}" in self.spec:
      x = self.layer(f"conv{i}", x)
      if i in pool_after:
        x = arrays.max_pool2(x)
      x = self.bn_act(f"bn{i}", x)
      i += 1
    return self.layer("out", x.reshape(x.shape[0], -1))

  def forward_cnn_small(self, x):
    x = self.bn_act("bn1", self.layer("conv1", x))
    x = self.bn_act("bn2", arrays.max_pool2(self.layer("conv2", x)))
    x = self.bn_act("bn3", arrays.max_pool2(self.layer("conv3", x)))
    x = self.bn_act("bn4", self.layer("fc4", x.reshape(x.shape[0], -1)))
    return self.layer("out", x)

  def shortcut(self, x, features: int, strides: int, prefix: str, k: int):
    in_ch = x.shape[-1]
    if strides > 1:
      x = arrays.avg_pool_same(x, strides)
      return self.batchnorm(f"{prefix}_down_bn", self.layer(f"{prefix}_down_conv", x))
    if in_ch == features:
      return x
    if features % in_ch == 0:
      return np.repeat(x, features // in_ch, axis=-1)
    if in_ch % features == 0:
      return x.reshape(*x.shape[:-1], features, in_ch // features).mean(axis=-1)
    return self.batchnorm(f"{prefix}_proj{k}_bn", self.layer(f"{prefix}_proj{k}", x))

  def forward_resnet(self, x):
    x = self.bn_act("bn1", self.layer("conv1", x))
    if self.spec["conv1"]["kernel_size"][0] != 3:  # ImageNet stem
      x = arrays.max_pool3s2(x)
    convs = (1, 2, 3) if self.fields.get("bottleneck") else (1, 2)
    for s, n_blocks in enumerate(self.fields["stage_sizes"], start=1):
      for b in range(1, n_blocks + 1):
        prefix = f"stage{s}_block{b}"
        for k in convs:
          name = f"{prefix}_conv{k}"
          spec = self.spec[name]
          y = self.batchnorm(f"{prefix}_bn{k}", self.layer(name, x))
          x = self.act(y + self.shortcut(x, spec["features"], spec["strides"][0], prefix, k))
    return self.layer("out", x.mean(axis=(1, 2)))

  def forward_mobilenet(self, x):
    x = self.bn_act("bn1", self.layer("conv1", x))
    i = 1
    while f"block{i}_dw" in self.spec:
      y = x
      if f"block{i}_expand" in self.spec:
        y = self.bn_act(f"block{i}_expand_bn", self.layer(f"block{i}_expand", y))
      y = self.bn_act(f"block{i}_dw_bn", self.layer(f"block{i}_dw", y))
      y = self.batchnorm(f"block{i}_project_bn", self.layer(f"block{i}_project", y))
      strides = self.spec[f"block{i}_dw"]["strides"][0]
      out_ch = self.spec[f"block{i}_project"]["features"]
      x = x + y if (strides == 1 and x.shape[-1] == out_ch) else y
      i += 1
    x = self.bn_act("bn_last", self.layer("conv_last", x))
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
