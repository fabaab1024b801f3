"""The density budget: its cubic schedule and the projection of keep ratios onto it.

A budget is an overall *density* (retained fraction of the prunable connections). During the
pruning phase it tightens from 1 to ``1 - target_sparsity`` on Zhu & Gupta's cubic schedule
(``optax.polynomial_schedule`` with power 3); a controller's keep ratios are then projected onto
the round's budget, either exactly (``fit_to_budget``: the controller only decides how the
budget is shared among layers) or as a ceiling (``project_to_budget``: AMC's "action wall").

All functions are pure and jittable; ``ratios`` and ``sizes`` are ``[L]`` arrays, the density
a scalar (Python or traced), checked with ``chex`` (an ``AssertionError`` otherwise).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

# The floor of a layer's keep ratio when the configuration leaves it to the target (rho_min = 0):
# at most DEFAULT_RHO_MIN, and at most RHO_MIN_FRACTION of the mean density, so that every
# target below 1 is reachable and a rule (ERK, uniform+) still has room to share the budget.
DEFAULT_RHO_MIN = 0.02
RHO_MIN_FRACTION = 0.4


def resolve_rho_min(rho_min: float, target_sparsity: float | None) -> float:
  """``rho_min`` as configured, or, when it is 0, ``min(0.02, 0.4 * (1 - target))`` (0.02 with
  the budget off): 0.02 at targets up to 0.95, 0.008 at 0.98, 0.004 at 0.99, 0.002 at 0.995."""
  if rho_min > 0:
    return float(rho_min)
  if target_sparsity is None or target_sparsity < 0:
    return DEFAULT_RHO_MIN
  return min(DEFAULT_RHO_MIN, RHO_MIN_FRACTION * (1.0 - float(target_sparsity)))


def cubic_schedule(target_density: float, budget_rounds: int) -> optax.Schedule:
  """Density budget as a function of the round index ``r``: ``d(r) = target + (1 - target) *
  (1 - min(1, (r + 1) / budget_rounds))**3`` — round 0 already prunes, and round
  ``budget_rounds - 1`` reaches the target."""
  poly = optax.polynomial_schedule(
    init_value=1.0, end_value=target_density, power=3, transition_steps=max(budget_rounds, 1)
  )
  return lambda r: poly(jnp.asarray(r) + 1)


def fit_to_budget(ratios, sizes, density, rho_min: float, num_iters: int = 40) -> jax.Array:
  """``clip(c * ratios, rho_min, 1)`` with the largest ``c >= 0`` whose retained fraction does
  not exceed ``density``: ratios are scaled up *or* down to meet the budget exactly, keeping
  their proportions where no clip binds. All-zero ratios count as equal; a budget below
  ``rho_min`` everywhere returns ``rho_min``."""
  _check(ratios, sizes, density)
  rho = jnp.asarray(ratios, jnp.float32)
  rho = jnp.where(jnp.max(rho) > 0, rho, jnp.ones_like(rho))
  sizes = jnp.asarray(sizes, jnp.float32)
  total = jnp.sum(sizes)
  budget = jnp.asarray(density, jnp.float32) * total
  c_max = 1.0 / jnp.maximum(jnp.min(jnp.where(rho > 0, rho, 1.0)), 1e-6)
  return jnp.where(
    rho_min * total > budget,
    jnp.full_like(rho, rho_min),
    _scale_to_budget(rho, sizes, budget, rho_min, c_max, num_iters),
  )


def project_to_budget(ratios, sizes, max_density, rho_min: float, num_iters: int = 40):
  """Ratios scaled *down* (only if needed) so the retained fraction is at most ``max_density``;
  ``rho_min`` everywhere if even that exceeds it; unchanged when already within budget."""
  _check(ratios, sizes, max_density)
  rho = jnp.asarray(ratios, jnp.float32)
  sizes = jnp.asarray(sizes, jnp.float32)
  total = jnp.sum(sizes)
  budget = jnp.asarray(max_density, jnp.float32) * total
  scaled = _scale_to_budget(rho, sizes, budget, rho_min, 1.0, num_iters)
  over = jnp.sum(rho * sizes) > budget
  infeasible = rho_min * total > budget
  return jnp.where(over, jnp.where(infeasible, jnp.full_like(rho, rho_min), scaled), rho)


def _scale_to_budget(rho, sizes, budget, rho_min, c_max, num_iters):
  """``clip(c * rho, rho_min, 1)`` for the largest ``c`` in ``[0, c_max]`` (bisection) whose
  retained connections ``sum(clip(c * rho_l, rho_min, 1) * n_l)`` do not exceed ``budget``."""

  def retained(c):
    return jnp.sum(jnp.clip(c * rho, rho_min, 1.0) * sizes)

  def bisect(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    ok = retained(mid) <= budget
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  init = (jnp.zeros((), jnp.float32), jnp.asarray(c_max, jnp.float32))
  lo, _ = jax.lax.fori_loop(0, num_iters, bisect, init)
  return jnp.clip(lo * rho, rho_min, 1.0)


def logits_to_budget(logits, sizes, density, rho_min: float, num_iters: int = 50) -> jax.Array:
  """Keep ratios ``rho_min + (1 - rho_min) * sigmoid(logits + s)`` with the shift ``s`` found by
  bisection so that the retained fraction equals ``density`` (at most, within float rounding).

  The smooth, bounded counterpart of :func:`fit_to_budget` for a learner: equal logits give
  every layer the same ratio, and no logit pushes a layer into a flat region (a ratio clipped
  at 1 no longer changes the reward, so nothing could be learned there).
  """
  _check(logits, sizes, density)
  z = jnp.asarray(logits, jnp.float32)
  sizes = jnp.asarray(sizes, jnp.float32)
  budget = jnp.asarray(density, jnp.float32) * jnp.sum(sizes)

  def ratios(s):
    return rho_min + (1.0 - rho_min) * jax.nn.sigmoid(z + s)

  def bisect(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    ok = jnp.sum(ratios(mid) * sizes) <= budget
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  span = 40.0 + jnp.max(jnp.abs(z))
  lo, _ = jax.lax.fori_loop(0, num_iters, bisect, (-span, span))
  return ratios(lo)


def _check(ratios, sizes, density) -> None:
  """``ratios [L]`` floating point, ``sizes [L]``, ``density`` a scalar."""
  chex.assert_rank(ratios, 1)
  chex.assert_type(ratios, float)
  chex.assert_equal(np.shape(sizes), np.shape(ratios))  # sizes: an array or a tuple
  chex.assert_rank(density, 0)


def rounding_slack(sizes) -> float:
  """Density that rounding ``k = round(rho * n)`` may add (half a connection per layer)."""
  return 0.5 * len(sizes) / float(sum(sizes))
