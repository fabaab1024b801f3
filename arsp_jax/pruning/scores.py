"""Survival scores: how much a connection deserves to stay, one array per layer.

Every score is a pure function ``fn(w, g) -> s`` of a layer's **latent** real weights ``w``
(any shape; binary weights all have magnitude 1, so they carry no information) and ``g``,
the running mean of the per-weight gradient magnitude ``|dL/dw|`` (same shape). Inputs are
checked with ``chex`` (floating-point arrays, ``w`` and ``g`` of one shape: an
``AssertionError`` otherwise, also under ``jit``). Scores are
float32, ``>= 0`` and finite, so they can be fed straight to
:func:`arsp_jax.reservoir.reservoir_mask` as sampling weights. Functions work on unbatched
layers; batch them with ``jax.vmap`` (e.g. over a stack of equally shaped layers).

Registered scores (see ``SCORES``):

``magnitude``  ``|w|``.
``taylor``     ``|w| * |g|`` (first-order Taylor estimate of the loss change).
``seed``       ``(|w| / sum|w|) * 1 / (|g| + eps)`` -- the proposal's formula, read as
               described in DESIGN.md (running gradient magnitude, latent weights). It ranks
               connections with vanishing gradients highest; CALIBRATION.md measures how that
               fails as a top-k criterion.
"""

from __future__ import annotations

from typing import Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from arsp_jax import registry as registry_lib
from arsp_jax.registry import Registry

Array = jnp.ndarray
ScoreFn = Callable[..., Array]

_F32_MAX = float(jnp.finfo(jnp.float32).max)


def _finite_nonneg(x: Array) -> Array:
  """Maps NaN to 0 and +inf to the largest float32, so a score is always usable."""
  x = jnp.nan_to_num(x, nan=0.0, posinf=_F32_MAX, neginf=0.0)
  return jnp.clip(x, 0.0, _F32_MAX)


@jax.jit
def magnitude(w: Array, g: Array | None = None) -> Array:
  """``|w|``. ``g`` is accepted for a uniform signature and ignored.

  Args:
    w: latent weights of one layer, any shape.
    g: ignored.
  Returns:
    float32 array shaped like ``w``.
  """
  del g  # one compiled function per shape, whatever g is
  chex.assert_type(w, float)
  return _finite_nonneg(jnp.abs(jnp.asarray(w, jnp.float32)))


def _weights_and_gradients(name: str, w, g) -> tuple[Array, Array]:
  """float32 ``w`` and ``g`` of the same shape (a score that needs gradients)."""
  if g is None:
    raise ValueError(f"score {name!r} needs gradients g")
  chex.assert_type([w, g], float)
  chex.assert_equal_shape([w, g])
  return jnp.asarray(w, jnp.float32), jnp.asarray(g, jnp.float32)


@jax.jit
def taylor(w: Array, g: Array) -> Array:
  """``|w| * |g|`` with ``g`` the running mean of ``|dL/dw|``: a first-order Taylor saliency
  on the averaged gradient (not SNIP's ``|w * g|`` of one batch).

  Args:
    w: latent weights of one layer, any shape.
    g: running mean of ``|dL/dw|``, same shape as ``w``.
  Returns:
    float32 array shaped like ``w``.
  """
  w, g = _weights_and_gradients("taylor", w, g)
  return _finite_nonneg(jnp.abs(w) * jnp.abs(g))


@jax.jit
def seed(w: Array, g: Array, eps: float = 1e-8) -> Array:
  """The proposal's score ``(|w| / sum|w|) * 1 / (|g| + eps)``.

  The sum runs over the whole layer (all axes of ``w``). A layer whose weights are all zero
  scores zero everywhere (never NaN). A zero gradient gives a large but finite score
  (``|w|/sum|w| / eps``, at most ``1/eps``).

  Args:
    w: latent weights of one layer, any shape.
    g: running mean of ``|dL/dw|``, same shape as ``w``.
    eps: floor added to ``|g|``; must be > 0.
  Returns:
    float32 array shaped like ``w``.
  """
  w, g = _weights_and_gradients("seed", w, g)
  a = jnp.abs(w)
  total = jnp.sum(a)
  safe_total = jnp.where(total > 0, total, 1.0)
  share = jnp.where(total > 0, a / safe_total, 0.0)
  return _finite_nonneg(share / (jnp.abs(g) + eps))


SCORES: Registry[ScoreFn] = registry_lib.of(
  "score", {"magnitude": magnitude, "taylor": taylor, "seed": seed}
)


def get(name: str) -> ScoreFn:
  """Returns the score function registered under ``name``.

  Raises:
    ValueError: for an unknown name; the message lists the valid ones.
  """
  return SCORES.get(name)


def layer_scores(
  name: str,
  params: Mapping[str, Array],
  grads: Mapping[str, Array] | None = None,
) -> dict[str, Array]:
  """Applies score ``name`` to every layer.

  Args:
    name: a key of ``SCORES``.
    params: latent weights keyed by layer path.
    grads: running gradient magnitudes with the same keys (may be None for ``magnitude``).
  Returns:
    ``{path: scores}`` with the keys of ``params``.
  """
  fn = get(name)
  if grads is not None:
    missing = sorted(set(params) - set(grads))
    if missing:
      raise ValueError(f"grads lack layers {missing}")
  return {path: fn(w, None if grads is None else grads[path]) for path, w in params.items()}
