"""Allocation rules: how a density budget is shared among layers, as users would pick it.

Each rule returns per-layer keep ratios ``[L]`` (layers in the fixed sorted order of
``LayerInfo``) for an overall density ``d``; the masks are then drawn per layer by the same
top-k (or reservoir) selection every method uses, so two methods that differ only in their rule
differ only in their ratios.

* ``uniform``  every layer at ``d``.
* ``erk``      Erdős–Rényi-Kernel (Evci et al. 2020): density ∝ ``(n_in + n_out + k_h + k_w) /
  (n_in · n_out · k_h · k_w)`` (``(n_in + n_out) / (n_in · n_out)`` for dense kernels), scaled
  to the budget, capped at 1 with the excess redistributed (``budget.fit_to_budget``).
* ``uniform_plus``  Gale et al. (2019): the first prunable layer dense, the last at most 80%
  sparse, the rest uniform. *Capped* where the first layer is too large for that (the
  default MLP's fc1 holds 43% of its connections): the first layer keeps
  ``min(1, d·N / (2·n_first))`` — dense when it fits in half the budget, else half the
  budget; the last (when there are ≥ 3 layers) keeps ``max(0.2, d)`` of what is left; the
  middle layers share the rest uniformly; the result is fitted to the budget exactly.
* ``global_ratios``  one threshold over all layers on per-layer normalised scores: ``mean``
  (each layer's scores divided by their mean, as jaxpruner normalises global magnitude) or
  ``lamp`` (LAMP, Lee et al. 2021: within a layer, sorting scores ascending,
  ``s_u² / Σ_{v ≥ u} s_v²``). Returned as the per-layer fractions above the threshold, so that
  per-layer top-k reproduces the global selection.

Inputs are checked with ``chex`` (the density a scalar, scores floating point, one shape or
score array per layer size): an ``AssertionError`` otherwise, also under ``jit``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from arsp_jax.pruning import budget as budget_lib
from arsp_jax.pruning import reservoir


def uniform(sizes, density) -> jax.Array:
  chex.assert_rank(density, 0)
  return jnp.full((len(sizes),), jnp.clip(jnp.asarray(density, jnp.float32), 0.0, 1.0))


def erk_weights(shapes) -> np.ndarray:
  """ERK's unnormalised density per layer from kernel shapes (``[..., n_in, n_out]``)."""
  out = []
  for shape in shapes:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
      out.append(1.0)
      continue
    dims = shape  # Dense: (n_in, n_out); Conv: (k_h, k_w, n_in, n_out)
    out.append(float(sum(dims)) / float(np.prod(dims)))
  return np.asarray(out, np.float32)


def erk(shapes, sizes, density, rho_min: float) -> jax.Array:
  chex.assert_equal(len(shapes), len(sizes))
  return budget_lib.fit_to_budget(jnp.asarray(erk_weights(shapes)), sizes, density, rho_min)


def uniform_plus(sizes, density, rho_min: float) -> jax.Array:
  """Gale et al.'s uniform+ with the capped first layer described in the module docstring."""
  chex.assert_rank(density, 0)
  n = np.asarray(sizes, np.float32)
  num = len(sizes)
  d = jnp.clip(jnp.asarray(density, jnp.float32), 0.0, 1.0)
  kept = d * n.sum()
  first = jnp.minimum(1.0, kept / (2.0 * n[0]))
  if num == 1:
    return budget_lib.fit_to_budget(jnp.ones((1,)), sizes, density, rho_min)
  left = kept - first * n[0]
  if num == 2:
    ratios = jnp.stack([first, jnp.clip(left / n[1], rho_min, 1.0)])
  else:
    last = jnp.minimum(jnp.maximum(0.2, d), left / n[-1])
    middle = jnp.clip((left - last * n[-1]) / n[1:-1].sum(), rho_min, 1.0)
    ratios = jnp.concatenate([first[None], jnp.full((num - 2,), middle), last[None]])
  return budget_lib.fit_to_budget(jnp.maximum(ratios, rho_min), sizes, density, rho_min)


def lamp_scores(scores: jax.Array) -> jax.Array:
  """LAMP scores of one layer: ``s_u² / Σ_{v: s_v ≥ s_u} s_v²`` (ties broken by position)."""
  chex.assert_type(scores, float)
  flat = jnp.asarray(scores, jnp.float32).reshape(-1)
  order = jnp.argsort(flat)
  sq = jnp.square(flat[order])
  tail = jnp.cumsum(sq[::-1])[::-1]  # Σ over this and every larger score
  lamp_sorted = sq / jnp.maximum(tail, 1e-30)
  return jnp.zeros_like(flat).at[order].set(lamp_sorted).reshape(jnp.shape(scores))


def global_ratios(layer_scores, sizes, density, normalise: str = "mean") -> jax.Array:
  """Per-layer kept fractions under one global threshold (see the module docstring).

  Args:
    layer_scores: list of per-layer score arrays (sorted layer order).
    sizes: connections per layer.
    density: overall density (traced).
    normalise: ``mean`` or ``lamp``.
  """
  chex.assert_rank(density, 0)
  chex.assert_type(layer_scores, float)
  chex.assert_equal([int(np.size(s)) for s in layer_scores], [int(n) for n in sizes])
  if normalise == "lamp":
    normed = [lamp_scores(s) for s in layer_scores]
  elif normalise == "mean":
    normed = [s / (jnp.mean(s) + 1e-12) for s in layer_scores]
  else:
    raise ValueError(f"unknown normalisation {normalise!r}")
  flat = jnp.concatenate([s.reshape(-1) for s in normed])
  total = int(sum(sizes))
  k = jnp.round(jnp.clip(density, 0.0, 1.0) * jnp.float32(total)).astype(jnp.int32)
  keep = reservoir.topk_mask(flat, k)
  counts, start = [], 0
  for n in sizes:
    counts.append(jnp.sum(keep[start : start + n].astype(jnp.float32)))
    start += n
  return jnp.stack(counts) / jnp.asarray(sizes, jnp.float32)
