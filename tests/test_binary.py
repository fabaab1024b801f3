"""Tests for the binarization primitives and the masked binary layers (arsp_jax.binary)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax.models.binary import (
  MASKS,
  BinaryConv,
  BinaryDense,
  binary_activation,
  clip_latent,
  effective_kernel,
  ste_sign,
  xnor_scale,
)

# RBG keys: XLA:CPU compiles threefry (partitionable) kernels very slowly, and
# initializer values do not matter here.
KEY = jax.random.key(0, impl="rbg")


def _rand(shape, seed=0, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


# --------------------------------------------------------------------------- ste_sign


def test_ste_sign_forward():
  x = jnp.array([-2.0, -1.0, -1e-6, 0.0, -0.0, 1e-6, 0.5, 3.0])
  y = ste_sign(x, 1.0)
  np.testing.assert_array_equal(np.asarray(y), [-1, -1, -1, 1, 1, 1, 1, 1])  # sign(0) = +1
  assert y.dtype == x.dtype
  assert ste_sign(x.astype(jnp.bfloat16), 1.0).dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(binary_activation(x)), np.asarray(y))


@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_ste_sign_gradient(clip):
  x = jnp.array([-2.0, -1.0, -0.7, -0.5, -0.1, 0.0, 0.3, 0.5, 0.7, 1.0, 1.5])
  w = jnp.arange(1.0, x.size + 1.0)
  g = jax.grad(lambda x: jnp.sum(ste_sign(x, clip) * w))(x)
  expected = np.where(np.abs(np.asarray(x)) <= clip, np.asarray(w), 0.0)  # |x| == clip passes
  np.testing.assert_array_equal(np.asarray(g), expected)
  # Also under jit and vmap.
  g2 = jax.jit(jax.vmap(jax.grad(lambda x: ste_sign(x, clip))))(x)
  np.testing.assert_array_equal(np.asarray(g2), (np.abs(np.asarray(x)) <= clip).astype(np.float32))


def test_clip_latent():
  w = np.array([-3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 2.5], np.float32)
  np.testing.assert_array_equal(
    np.asarray(clip_latent(w)), np.array([-1, -1, -0.2, 0, 0.4, 1, 1], np.float32)
  )
  np.testing.assert_array_equal(
    np.asarray(clip_latent(w, 0.5)), np.array([-0.5, -0.5, -0.2, 0, 0.4, 0.5, 0.5], np.float32)
  )


# --------------------------------------------------------------------------- effective kernel


def test_xnor_scale_shape_and_value():
  w = _rand((3, 3, 4, 8))
  a = xnor_scale(jnp.asarray(w))
  chex.assert_shape(a, (1, 1, 1, 8))
  chex.assert_trees_all_close(a[0, 0, 0], np.abs(w).mean(axis=(0, 1, 2)), rtol=1e-6)


def test_effective_kernel_plain_and_masked():
  w = _rand((6, 5))
  mask = (np.random.default_rng(1).random(w.shape) < 0.5).astype(np.float32)
  sign = np.where(w >= 0, 1.0, -1.0)
  np.testing.assert_array_equal(np.asarray(effective_kernel(w, None)), sign)
  np.testing.assert_array_equal(np.asarray(effective_kernel(w, mask)), sign * mask)
  chex.assert_trees_all_close(
    effective_kernel(w, None, scale=True), sign * np.abs(w).mean(0, keepdims=True), rtol=1e-6
  )


def test_xnor_scale_over_kept_connections_only():
  w = _rand((6, 4))
  mask = np.ones_like(w)
  mask[:3, 0] = 0.0  # column 0: 3 of 6 kept
  mask[:, 1] = 0.0  # column 1: fully pruned -> zero weights, no NaN
  eff = np.asarray(effective_kernel(w, mask, scale=True))
  alpha0 = np.abs(w[3:, 0]).mean()
  np.testing.assert_allclose(
    eff[:, 0], np.where(w[:, 0] >= 0, 1, -1) * mask[:, 0] * alpha0, rtol=1e-6
  )
  np.testing.assert_array_equal(eff[:, 1], 0.0)
  np.testing.assert_allclose(
    np.abs(eff[:, 2:]), np.broadcast_to(np.abs(w[:, 2:]).mean(0), (6, 2)), rtol=1e-6
  )
  # Pruned magnitudes never influence the scale.
  w2 = w.copy()
  w2[mask == 0] *= -7.0
  np.testing.assert_array_equal(np.asarray(effective_kernel(w2, mask, scale=True)), eff)


@pytest.mark.parametrize("scale", [False, True])
def test_effective_kernel_gradient_zero_at_masked_and_clipped(scale):
  w = np.array([[0.3, -0.2], [1.5, 0.1], [-0.6, -2.0], [0.05, 0.4]], np.float32)
  mask = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], np.float32)
  g = np.asarray(
    jax.grad(
      lambda w: jnp.sum(effective_kernel(w, mask, scale=scale) * jnp.arange(1.0, 9.0).reshape(4, 2))
    )(w)
  )
  assert np.all(g[mask == 0] == 0)
  if not scale:  # pure STE: zero where |w| > clip, incoming gradient elsewhere
    expected = np.arange(1.0, 9.0).reshape(4, 2) * mask * (np.abs(w) <= 1.0)
    np.testing.assert_array_equal(g, expected)


# --------------------------------------------------------------------------- layers


def test_binary_dense():
  x = _rand((3, 6))
  layer = BinaryDense(4)
  v = layer.init(KEY, x)
  k = np.asarray(v["params"]["kernel"])
  chex.assert_shape(k, (6, 4))
  chex.assert_trees_all_equal(v[MASKS], {"kernel": np.ones((6, 4), np.float32)})
  sign = np.where(k >= 0, 1.0, -1.0)
  chex.assert_trees_all_close(layer.apply(v, x), x @ sign, rtol=1e-5, atol=1e-5)
  mask = np.zeros((6, 4), np.float32)
  mask[::2] = 1.0
  vm = {**v, MASKS: {"kernel": mask}}
  chex.assert_trees_all_close(layer.apply(vm, x), x @ (sign * mask), rtol=1e-5, atol=1e-5)
  # Binary inputs + bias.
  lb = BinaryDense(4, binary_inputs=True, use_bias=True)
  vb = lb.init(KEY, x)
  assert vb["params"]["bias"].shape == (4,)
  xs = np.where(x >= 0, 1.0, -1.0)
  chex.assert_trees_all_close(
    lb.apply(vb, x), xs @ np.where(vb["params"]["kernel"] >= 0, 1.0, -1.0), rtol=1e-5, atol=1e-5
  )


def test_binary_conv_matches_reference():
  x = _rand((2, 6, 6, 3))
  layer = BinaryConv(5, kernel_size=(3, 3), strides=(2, 2))
  v = layer.init(KEY, x)
  k = v["params"]["kernel"]
  chex.assert_shape(k, (3, 3, 3, 5))
  assert v[MASKS]["kernel"].shape == k.shape
  y = layer.apply(v, x)
  chex.assert_shape(y, (2, 3, 3, 5))
  ref = jax.lax.conv_general_dilated(
    x, jnp.where(k >= 0, 1.0, -1.0), (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  chex.assert_trees_all_close(y, ref, rtol=1e-5, atol=1e-5)


def test_depthwise_binary_conv():
  c = 4
  x = _rand((2, 5, 5, c))
  layer = BinaryConv(c, kernel_size=(3, 3), feature_group_count=c)
  v = layer.init(KEY, x)
  chex.assert_shape(v["params"]["kernel"], (3, 3, 1, c))
  chex.assert_shape(v[MASKS]["kernel"], (3, 3, 1, c))
  y = layer.apply(v, x)
  chex.assert_shape(y, (2, 5, 5, c))
  # Channel c of the output depends on input channel c only.
  x2 = x.copy()
  x2[..., 1] += 1.0
  d = np.abs(np.asarray(layer.apply(v, x2) - y)).max(axis=(0, 1, 2))
  assert d[1] > 0 and np.all(d[[0, 2, 3]] == 0)
  # Masking a whole channel's 3x3 filter zeroes that output channel.
  mask = np.ones((3, 3, 1, c), np.float32)
  mask[..., 2] = 0
  y0 = np.asarray(layer.apply({**v, MASKS: {"kernel": mask}}, x))
  np.testing.assert_array_equal(y0[..., 2], 0.0)
  # Depthwise with channel multiplier 2.
  l2 = BinaryConv(2 * c, kernel_size=(3, 3), feature_group_count=c)
  chex.assert_shape(l2.init(KEY, x)["params"]["kernel"], (3, 3, 1, 2 * c))
