"""Tests for arsp_jax.scores: hand-computed values, finiteness, vmap, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax.pruning import scores

W = np.array([[1.0, -2.0], [0.0, 3.0]], np.float32)
G = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)


def test_magnitude_values():
  np.testing.assert_allclose(scores.magnitude(W), [[1, 2], [0, 3]])
  np.testing.assert_allclose(scores.magnitude(W, G), [[1, 2], [0, 3]])


def test_taylor_values():
  np.testing.assert_allclose(scores.taylor(W, G), [[0.5, 2.0], [0.0, 0.0]])


def test_seed_values():
  # sum|w| = 6: shares 1/6, 1/3, 0, 1/2; divided by |g| + 1e-8.
  got = np.asarray(scores.seed(W, G))
  want = np.array([[(1 / 6) / 0.5, (1 / 3) / 1.0], [0.0, 0.5 / 1e-8]])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  got = np.asarray(scores.seed(W, G, eps=0.5))
  np.testing.assert_allclose(got, [[(1 / 6) / 1.0, (1 / 3) / 1.5], [0.0, 0.5 / 0.5]], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_finite_nonnegative_float32_for_zero_weights_and_grads(name):
  fn = scores.get(name)
  zeros = jnp.zeros((3, 4))
  rand = jax.random.normal(jax.random.key(0), (3, 4))
  for w, g in [(zeros, zeros), (zeros, rand), (rand, zeros), (rand, rand)]:
    s = fn(w, g)
    assert s.dtype == jnp.float32 and s.shape == w.shape
    assert bool(jnp.all(jnp.isfinite(s))) and bool(jnp.all(s >= 0)), (name, s)


def test_seed_all_zero_layer_scores_zero_and_zero_grad_is_large():
  assert np.all(np.asarray(scores.seed(jnp.zeros(5), jnp.ones(5))) == 0)
  s = np.asarray(scores.seed(jnp.array([1.0, 1.0]), jnp.zeros(2)))
  np.testing.assert_allclose(s, [0.5e8, 0.5e8], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_vmap_over_stacked_layers_and_jit(name):
  fn = scores.get(name)
  w = jax.random.normal(jax.random.key(1), (3, 4, 5))
  g = jnp.abs(jax.random.normal(jax.random.key(2), (3, 4, 5)))
  batched = jax.jit(jax.vmap(fn))(w, g)
  for i in range(3):
    np.testing.assert_allclose(batched[i], fn(w[i], g[i]), rtol=1e-6)


def test_seed_sums_over_whole_layer():
  w = jnp.arange(1.0, 7.0).reshape(2, 3)
  s = scores.seed(w, jnp.ones_like(w), eps=0.0)
  np.testing.assert_allclose(s, w / 21.0, rtol=1e-6)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="magnitude, taylor, seed"):
    scores.get("snip")


def test_gradient_scores_need_gradients_and_matching_shapes():
  with pytest.raises(ValueError):
    scores.taylor(W, None)
  with pytest.raises(AssertionError, match="shape"):  # chex.assert_equal_shape
    scores.seed(W, G[0])


def test_layer_scores_applies_per_layer():
  params = {"dense/kernel": W, "conv/kernel": jnp.ones((2, 2, 1, 3))}
  grads = {"dense/kernel": G, "conv/kernel": jnp.full((2, 2, 1, 3), 2.0)}
  out = scores.layer_scores("taylor", params, grads)
  assert set(out) == set(params)
  np.testing.assert_allclose(out["dense/kernel"], scores.taylor(W, G))
  np.testing.assert_allclose(out["conv/kernel"], 2.0)
  mags = scores.layer_scores("magnitude", params)
  np.testing.assert_allclose(mags["dense/kernel"], np.abs(W))
  with pytest.raises(ValueError, match="lack"):
    scores.layer_scores("seed", params, {"dense/kernel": G})
