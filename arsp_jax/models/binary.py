"""Binarization primitives and binary Flax layers that take a connection mask.

Vocabulary follows Larq: a *kernel quantizer* binarizes the latent real weights,
an *input quantizer* (optional) binarizes activations.  Every binary layer owns a
``masks`` collection variable with the kernel's shape; the effective weight is

    w_eff = mask * sign(w) [* alpha]

where ``sign(0) = +1``, ``alpha`` is the optional per-output-channel XNOR-Net
scale ``mean |w|`` over the input axes, and gradients reach the latent ``w``
through the straight-through estimator, zeroed where ``|w| > clip``.

The ``masks`` collection is how pruning talks to a model: it mirrors exactly the
prunable kernels (``masks[path]['kernel']`` for ``params[path]['kernel']``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

MASKS = "masks"


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def ste_sign(x: Array, clip: float = 1.0) -> Array:
  """Sign with ``sign(0) = +1`` and a straight-through gradient.

  Forward: ``where(x >= 0, 1, -1)``.  Backward: the incoming gradient passes
  unchanged where ``|x| <= clip`` and is zero elsewhere (BinaryConnect / BNN
  "hard tanh" STE).
  """
  return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def _ste_sign_fwd(x, clip):
  return ste_sign(x, clip), x


def _ste_sign_bwd(clip, x, g):
  return (g * (jnp.abs(x) <= clip).astype(g.dtype),)


ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


def clip_latent(w: Array, clip: float = 1.0) -> Array:
  """BinaryConnect latent-weight clipping to ``[-clip, clip]``."""
  return jnp.clip(w, -clip, clip)


def xnor_scale(w: Array) -> Array:
  """Per-output-channel scale ``mean |w|`` over all but the last axis (keepdims)."""
  axes = tuple(range(w.ndim - 1))
  return jnp.mean(jnp.abs(w), axis=axes, keepdims=True)


def effective_kernel(
  kernel: Array, mask: Array | None, *, clip: float = 1.0, scale: bool = False
) -> Array:
  """``mask * sign(kernel)`` (times the XNOR scale when ``scale``).

  The XNOR scale, when used, is computed over the *kept* connections only, so a
  pruned connection never contributes to it.
  """
  w = ste_sign(kernel, clip)
  if mask is not None:
    w = w * mask
  if scale:
    if mask is None:
      alpha = xnor_scale(kernel)
    else:
      axes = tuple(range(kernel.ndim - 1))
      kept = jnp.maximum(jnp.sum(mask, axis=axes, keepdims=True), 1.0)
      alpha = jnp.sum(jnp.abs(kernel) * mask, axis=axes, keepdims=True) / kept
    w = w * alpha
  return w


def binary_activation(x: Array, clip: float = 1.0) -> Array:
  """Binary activation: sign with STE (hard-tanh gradient)."""
  return ste_sign(x, clip)


def _binary_operands(layer: nn.Module, x: Array, shape: tuple) -> tuple[Array, Array]:
  """A binary layer's latent kernel and mask variables (created on first use), its inputs
  (binarized with ``binary_inputs``) and its effective kernel ``mask * sign(w)`` (scaled)."""
  kernel = layer.param("kernel", layer.kernel_init, shape, jnp.float32)
  mask = layer.variable(MASKS, "kernel", lambda: jnp.ones(kernel.shape, jnp.float32))
  if layer.binary_inputs:
    x = binary_activation(x, layer.clip)
  w = effective_kernel(kernel, mask.value, clip=layer.clip, scale=layer.scale)
  return x, w.astype(x.dtype)


class BinaryLayer(nn.Module):
  """What every binary layer has.

  Attributes:
    features: output width (channels).
    use_bias: add a real-valued bias (usually off: a batchnorm follows).
    scale: XNOR-Net per-output-channel scaling.
    binary_inputs: binarize the inputs too (BNN / XNOR style).
    clip: STE clipping threshold (also the latent-weight clip range).
  """

  features: int
  use_bias: bool = False
  scale: bool = False
  binary_inputs: bool = False
  clip: float = 1.0
  kernel_init: Callable[..., Any] = nn.initializers.lecun_uniform()


class BinaryDense(BinaryLayer):
  """Dense layer with binary (sign) weights and a connection mask (fields: ``BinaryLayer``)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x, w = _binary_operands(self, x, (x.shape[-1], self.features))
    y = jnp.dot(x, w)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y


class BinaryConv(BinaryLayer):
  """2-D convolution (NHWC, kernel HWIO) with binary weights and a connection mask (fields:
  ``BinaryLayer``, plus these; pass them by keyword).

  ``feature_group_count`` supports depthwise convolutions (MobileNet).
  """

  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  feature_group_count: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (*self.kernel_size, x.shape[-1] // self.feature_group_count, self.features)
    x, w = _binary_operands(self, x, shape)
    y = jax.lax.conv_general_dilated(
      x,
      w,
      window_strides=tuple(self.strides),
      padding=self.padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=self.feature_group_count,
    )
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y
