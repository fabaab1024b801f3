"""Convolutional binary networks (VGG-small, ResNet-18/50 Bi-Real, MobileNetV2, small CNN).

All models follow the conventions of :class:`arsp_jax.models.MLP`:

* called as ``model.apply(variables, images, train=bool)`` on NHWC float32 images;
* fields ``num_classes``, ``binary_activations``, ``scale``, ``bn_momentum``,
  ``clip``, ``binary_first``, ``binary_last``;
* binary layers are :class:`BinaryConv` / :class:`BinaryDense` and own a
  ``masks`` entry (``masks[name]['kernel']`` mirrors ``params[name]['kernel']``);
  everything else (the first and last layer by default, the real-valued
  downsampling shortcuts of the ResNets) is full precision, has no mask and is
  never pruned;
* every (hidden) convolution is followed by a BatchNorm without ``axis_name``
  (batch statistics are global under ``jax.jit`` over a sharded batch);
* hidden activation: ReLU, or hard-tanh ``clip(x, -1, 1)`` with
  ``binary_activations`` -- then every binary layer whose input is a hidden
  activation binarizes that input with ``sign`` (STE).  The network input is
  never binarized, even with ``binary_first``.  (ReLU is not used in the binary
  activation mode because ``sign(relu(x)) = +1`` everywhere.)
* with ``binary_last`` the classifier is a ``BinaryDense`` with bias and XNOR
  scale, exactly as in the MLP.

Layer names are stable: the first layer is always ``conv1`` (+ ``bn1``) and the
classifier is always ``out``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from arsp_jax.models.binary import BinaryConv, BinaryDense
from arsp_jax.models.registry import BinaryNet, batch_norm, classifier, register

Array = jax.Array


# --------------------------------------------------------------------------- helpers


def _act(x: Array, binary_activations: bool) -> Array:
  """Hidden activation, identical to the MLP's: hard-tanh in BNN mode, else ReLU."""
  return jnp.clip(x, -1.0, 1.0) if binary_activations else nn.relu(x)


def _scaled(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric ``kernel // 2`` padding (PyTorch style, also for strided convs)."""
  p = kernel // 2
  return ((p, p), (p, p))


def _conv(
  module: nn.Module,
  features: int,
  kernel: int,
  *,
  strides: int = 1,
  name: str,
  binary: bool,
  binary_inputs: bool = False,
  groups: int = 1,
) -> nn.Module:
  """A ``BinaryConv`` (masked) when ``binary``, else a full-precision ``nn.Conv``.

  Must be called from inside ``module``'s compact ``__call__``.
  """
  if binary:
    return BinaryConv(
      features,
      kernel_size=(kernel, kernel),
      strides=(strides, strides),
      padding=_pad(kernel),
      feature_group_count=groups,
      scale=module.scale,
      binary_inputs=binary_inputs,
      clip=module.clip,
      name=name,
    )
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(strides, strides),
    padding=_pad(kernel),
    feature_group_count=groups,
    use_bias=False,
    name=name,
  )


def _first_conv(module: nn.Module, features: int, kernel: int, strides: int = 1) -> nn.Module:
  """The input layer ``conv1``: full precision unless ``binary_first`` (input not binarized)."""
  return _conv(
    module,
    features,
    kernel,
    strides=strides,
    name="conv1",
    binary=module.binary_first,
    binary_inputs=False,
  )


def _max_pool(x: Array) -> Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _is_small(small_inputs: bool | None, x: Array) -> bool:
  return small_inputs if small_inputs is not None else x.shape[1] <= 64


# --------------------------------------------------------------------------- VGG-small


@register("vgg_small")
class VGGSmall(BinaryNet):
  """BinaryNet / VGG-small for CIFAR-10 (32x32x3).

  ``128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-FC``, BatchNorm after every
  convolution, BinaryNet ordering ``conv -> [maxpool] -> BN -> act``.  Layers
  ``conv1..conv6`` / ``bn1..bn6`` and the classifier ``out``; ``conv1`` and
  ``out`` are full precision by default.  ``width`` multiplies every channel
  count (tests use e.g. ``width=0.125``).
  """

  num_classes: int = 10
  width: float = 1.0
  channels: Sequence[int] = (128, 128, 256, 256, 512, 512)
  pool_after: Sequence[int] = (2, 4, 6)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i, c in enumerate(self.channels, start=1):
      features = _scaled(c, self.width)
      if i == 1:
        x = _first_conv(self, features, 3)(x)
      else:
        x = _conv(
          self, features, 3, name=f"conv{i}", binary=True, binary_inputs=self.binary_activations
        )(x)
      if i in self.pool_after:
        x = _max_pool(x)
      x = batch_norm(train, self.bn_momentum, name=f"bn{i}")(x)
      x = _act(x, self.binary_activations)
    x = x.reshape((x.shape[0], -1))
    return classifier(self, x)


# --------------------------------------------------------------------------- ResNets (Bi-Real)


class BiRealResNet(BinaryNet):
  """Bi-Real-Net style binary ResNet (shared implementation of resnet18 / resnet50).

  Every binary convolution has its own real-valued shortcut (Bi-Real: one
  shortcut per conv, not per block)::

      y = act(BN(BinaryConv(x)) + shortcut(x))

  ``shortcut`` is

  * the identity when shape is unchanged;
  * for a strided conv: ``AvgPool 2x2 -> full-precision 1x1 conv -> BN`` (named
    ``<block>_down_conv`` / ``<block>_down_bn``; real-valued, no mask, not pruned);
  * for a channel change at stride 1 (bottleneck 1x1 convs, parameter free as
    in ReActNet): channel repetition when widening by an integer factor,
    averaging of consecutive channel groups when narrowing; any other ratio
    falls back to a full-precision ``1x1 conv -> BN`` (``<block>_proj<k>``).

  Stem (``conv1``/``bn1``, full precision by default): 7x7 stride 2 conv + BN +
  act + 3x3 stride 2 max-pool for ImageNet, or 3x3 stride 1 without max-pool when
  ``small_inputs`` (``None`` = automatic: input height <= 64).  Head: global
  average pool + ``out``.  Stage ``s`` (1-based) has ``width * 2**(s-1)`` channels
  (times 4 at the output of a bottleneck); its first block has stride 2 for
  ``s > 1``.  Names: ``stage{s}_block{b}_conv{k}`` / ``..._bn{k}``.

  ``binary_activations`` defaults to False for consistency with the other
  models (real activations, binary weights); Bi-Real-Net proper uses
  ``binary_activations=True``, where the activation between convs is the hard-tanh
  (so the binarized conv inputs equal ``sign`` of the real-valued stream).
  """

  num_classes: int = 1000
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  small_inputs: bool | None = None

  def _shortcut(
    self, x: Array, features: int, strides: int, prefix: str, k: int, train: bool
  ) -> Array:
    in_ch = x.shape[-1]
    if strides > 1:
      x = nn.avg_pool(
        x, (strides, strides), strides=(strides, strides), padding="SAME", count_include_pad=False
      )
      x = nn.Conv(features, (1, 1), use_bias=False, name=f"{prefix}_down_conv")(x)
      return batch_norm(train, self.bn_momentum, name=f"{prefix}_down_bn")(x)
    if in_ch == features:
      return x
    if features % in_ch == 0:
      return jnp.repeat(x, features // in_ch, axis=-1)
    if in_ch % features == 0:
      return x.reshape((*x.shape[:-1], features, in_ch // features)).mean(axis=-1)
    x = nn.Conv(features, (1, 1), use_bias=False, name=f"{prefix}_proj{k}")(x)
    return batch_norm(train, self.bn_momentum, name=f"{prefix}_proj{k}_bn")(x)

  def _binary_conv(
    self, x: Array, features: int, kernel: int, strides: int, prefix: str, k: int, train: bool
  ) -> Array:
    y = _conv(
      self,
      features,
      kernel,
      strides=strides,
      name=f"{prefix}_conv{k}",
      binary=True,
      binary_inputs=self.binary_activations,
    )(x)
    y = batch_norm(train, self.bn_momentum, name=f"{prefix}_bn{k}")(y)
    return _act(y + self._shortcut(x, features, strides, prefix, k, train), self.binary_activations)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if _is_small(self.small_inputs, x):
      x = _first_conv(self, self.width, 3)(x)
      x = batch_norm(train, self.bn_momentum, name="bn1")(x)
      x = _act(x, self.binary_activations)
    else:
      x = _first_conv(self, self.width, 7, strides=2)(x)
      x = batch_norm(train, self.bn_momentum, name="bn1")(x)
      x = _act(x, self.binary_activations)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, n_blocks in enumerate(self.stage_sizes, start=1):
      features = self.width * 2 ** (s - 1)
      for b in range(1, n_blocks + 1):
        strides = 2 if (s > 1 and b == 1) else 1
        prefix = f"stage{s}_block{b}"
        if self.bottleneck:
          x = self._binary_conv(x, features, 1, 1, prefix, 1, train)
          x = self._binary_conv(x, features, 3, strides, prefix, 2, train)
          x = self._binary_conv(x, 4 * features, 1, 1, prefix, 3, train)
        else:
          x = self._binary_conv(x, features, 3, strides, prefix, 1, train)
          x = self._binary_conv(x, features, 3, 1, prefix, 2, train)
    x = jnp.mean(x, axis=(1, 2))
    return classifier(self, x)


@register("resnet18")
class BiRealResNet18(BiRealResNet):
  """Bi-Real-Net-18: basic blocks, stages (2, 2, 2, 2)."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False


@register("resnet50")
class BiRealResNet50(BiRealResNet):
  """Bi-Real-style ResNet-50: bottleneck blocks (binary 1x1-3x3-1x1), stages (3, 4, 6, 3)."""

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  bottleneck: bool = True


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
  """MobileNetV2 channel rounding (torchvision's ``_make_divisible``)."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


# (expansion t, output channels c, repeats n, first stride s) -- MobileNetV2 Table 2.
MOBILENET_V2_BLOCKS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


@register("mobilenet_v2")
class MobileNetV2(BinaryNet):
  """Binary MobileNetV2.

  Inverted residual block ``i`` (1-based over the whole network)::

      [block{i}_expand: binary 1x1 -> BN -> act]   (omitted when t == 1)
      block{i}_dw: binary 3x3 depthwise (feature_group_count = channels) -> BN -> act
      block{i}_project: binary 1x1 -> BN            (linear bottleneck)
      + input when stride 1 and channels unchanged

  Stem ``conv1`` (3x3, stride 2; full precision by default) + ``bn1``; then
  ``conv_last`` (binary 1x1 to ``last_features``) + ``bn_last`` + act, global
  average pool and the classifier ``out`` (full precision by default).  ReLU
  replaces ReLU6 (hard-tanh with ``binary_activations``).  Channels are
  ``_make_divisible(c * width_mult, 8)``; ``last_features`` is scaled only for
  ``width_mult > 1`` (as in the paper).  ``small_inputs`` (``None`` = automatic,
  input height <= 64) makes the stem stride 1 and the first stride-2 stage
  stride 1 (the usual CIFAR adaptation).  ``blocks`` may be shortened for tests.
  """

  num_classes: int = 1000
  width_mult: float = 1.0
  blocks: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_BLOCKS
  stem_features: int = 32
  last_features: int = 1280
  small_inputs: bool | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    small = _is_small(self.small_inputs, x)
    ba = self.binary_activations
    x = _first_conv(
      self, _make_divisible(self.stem_features * self.width_mult), 3, strides=1 if small else 2
    )(x)
    x = batch_norm(train, self.bn_momentum, name="bn1")(x)
    x = _act(x, ba)
    i = 0
    skipped_stride = not small
    for t, c, n, s in self.blocks:
      out_ch = _make_divisible(c * self.width_mult)
      if s > 1 and not skipped_stride:
        s, skipped_stride = 1, True
      for r in range(n):
        i += 1
        strides = s if r == 0 else 1
        in_ch = x.shape[-1]
        hidden = in_ch * t
        y = x
        if t != 1:
          y = _conv(self, hidden, 1, name=f"block{i}_expand", binary=True, binary_inputs=ba)(y)
          y = batch_norm(train, self.bn_momentum, name=f"block{i}_expand_bn")(y)
          y = _act(y, ba)
        y = _conv(
          self,
          hidden,
          3,
          strides=strides,
          name=f"block{i}_dw",
          binary=True,
          binary_inputs=ba,
          groups=hidden,
        )(y)
        y = batch_norm(train, self.bn_momentum, name=f"block{i}_dw_bn")(y)
        y = _act(y, ba)
        y = _conv(self, out_ch, 1, name=f"block{i}_project", binary=True, binary_inputs=ba)(y)
        y = batch_norm(train, self.bn_momentum, name=f"block{i}_project_bn")(y)
        x = x + y if (strides == 1 and in_ch == out_ch) else y
    last = (
      _make_divisible(self.last_features * self.width_mult)
      if self.width_mult > 1.0
      else self.last_features
    )
    x = _conv(self, last, 1, name="conv_last", binary=True, binary_inputs=ba)(x)
    x = batch_norm(train, self.bn_momentum, name="bn_last")(x)
    x = _act(x, ba)
    x = jnp.mean(x, axis=(1, 2))
    return classifier(self, x)


# --------------------------------------------------------------------------- small CNN


@register("cnn_small")
class CNNSmall(BinaryNet):
  """Small CNN for 28x28 Fashion-MNIST.

  ``conv1`` 32 (full precision by default) -> ``conv2`` 64 (binary) -> MP2 ->
  ``conv3`` 128 (binary) -> MP2 -> ``fc4`` 256 (binary dense) -> ``out``, with
  ``bn1..bn4`` after each hidden layer (``conv -> [maxpool] -> BN -> act``).
  ``width`` multiplies the hidden widths.
  """

  num_classes: int = 10
  width: float = 1.0

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    ba = self.binary_activations
    x = _first_conv(self, _scaled(32, self.width), 3)(x)
    x = batch_norm(train, self.bn_momentum, name="bn1")(x)
    x = _act(x, ba)
    x = _conv(self, _scaled(64, self.width), 3, name="conv2", binary=True, binary_inputs=ba)(x)
    x = _max_pool(x)
    x = batch_norm(train, self.bn_momentum, name="bn2")(x)
    x = _act(x, ba)
    x = _conv(self, _scaled(128, self.width), 3, name="conv3", binary=True, binary_inputs=ba)(x)
    x = _max_pool(x)
    x = batch_norm(train, self.bn_momentum, name="bn3")(x)
    x = _act(x, ba)
    x = x.reshape((x.shape[0], -1))
    x = BinaryDense(
      _scaled(256, self.width), scale=self.scale, clip=self.clip, binary_inputs=ba, name="fc4"
    )(x)
    x = batch_norm(train, self.bn_momentum, name="bn4")(x)
    x = _act(x, ba)
    return classifier(self, x)
