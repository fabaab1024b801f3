"""Allocation controllers: who sets each layer's keep ratio in a pruning round.

A controller is a pair of pure functions registered by name (``register``):

* ``init(num_layers, rc, rng) -> state`` — its own state (a pytree; ``{}`` if it has none);
* ``step(ctx, state, rng) -> (ratios [L], state, metrics)`` — one round's keep ratios.

``ctx`` (:class:`Context`) is what the round offers: layer sizes and shapes, the round's density
budget (``None`` with the budget off), the layers' scores and the agent's observations, and a
batched ``evaluate(ratios [P, L]) -> {"reward": [P], ...}`` that scores ``P`` candidate
allocations on the same reward images inside the compiled step (``train/candidates.py``), and
the round's settings ``ctx.rc`` (``rounds.RoundConfig``: ``rho_min``, the budget mode, the
agent's hyperparameters ``rc.ppo``; the reward's ``λ`` is applied by ``evaluate``). The round
(``train/round.py``) turns the ratios into masks the same way for every controller.

A new controller: write ``init``/``step`` here (or anywhere) and call
``register("name", init, step)``; then name it in a method of ``methods.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from arsp_jax.pruning import allocation, ppo
from arsp_jax.pruning import budget as budget_lib
from arsp_jax.pruning.rounds import RoundConfig
from arsp_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Context:
  """What a controller sees in one round (traced values inside a compiled step)."""

  sizes: tuple  # connections per layer (static)
  shapes: tuple  # kernel shapes (static)
  budget: Any  # scalar density budget of this round, or None (budget off)
  slack: float  # density that rounding k = round(rho * n) may add: projections leave room
  scores: list  # per-layer survival scores (sorted layer order)
  obs: jax.Array  # [L, ppo.OBS_DIM] agent observations
  evaluate: Callable[[jax.Array], dict]  # ratios [P, L] -> {"reward": [P], ...}
  rc: RoundConfig  # the round's settings (rho_min, budget mode, the agent's rc.ppo, ...)
  round: Any = 0  # the round's index (traced)

  @property
  def num_layers(self) -> int:
    return len(self.sizes)

  @property
  def searching(self) -> jax.Array:
    """Whether candidates are scored this round (``rc.search_rounds``; later rounds apply the
    searcher's last allocation at a rule's cost)."""
    if self.rc.search_rounds < 0:
      return jnp.ones((), jnp.bool_)
    return jnp.asarray(self.round) < self.rc.search_rounds

  @property
  def exact(self) -> bool:
    """Ratios must meet the budget exactly (else: at most)."""
    return self.rc.exact_budget

  def to_budget(self, ratios: jax.Array) -> jax.Array:
    """Ratios projected onto the round's budget (unchanged with the budget off)."""
    if self.budget is None:
      return jnp.clip(ratios, self.rc.rho_min, 1.0)
    fit = budget_lib.fit_to_budget if self.exact else budget_lib.project_to_budget
    return fit(ratios, self.sizes, self.projected_budget, self.rc.rho_min)

  @property
  def projected_budget(self):
    """The budget a projection aims at: rounding then cannot push the density over it."""
    return None if self.budget is None else self.budget - self.slack


class Controller(NamedTuple):
  init: Callable[..., Any]
  step: Callable[..., tuple]


REGISTRY: Registry[Controller] = Registry("controller")


def register(name: str, init: Callable[..., Any], step: Callable[..., tuple]) -> None:
  REGISTRY.register(name, Controller(init, step))


def get(name: str) -> Controller:
  """The controller registered as ``name`` (ValueError naming the known ones otherwise)."""
  return REGISTRY.get(name)


def _no_state(num_layers, rc, rng):
  return {}


def _level(ctx: Context) -> jax.Array:
  return jnp.asarray(1.0 if ctx.budget is None else ctx.budget, jnp.float32)


def _projected(ctx: Context) -> jax.Array:
  return jnp.asarray(1.0 if ctx.budget is None else ctx.projected_budget, jnp.float32)


# --------------------------------------------------------------------------- fixed rules


def _rule(fn):
  def step(ctx: Context, state, rng):
    return fn(ctx), state, {}

  return step


register("none", _no_state, _rule(lambda ctx: jnp.ones((ctx.num_layers,), jnp.float32)))
register("uniform", _no_state, _rule(lambda ctx: allocation.uniform(ctx.sizes, _level(ctx))))
register(
  "erk",
  _no_state,
  _rule(lambda ctx: allocation.erk(ctx.shapes, ctx.sizes, _projected(ctx), ctx.rc.rho_min)),
)
register(
  "uniform_plus",
  _no_state,
  _rule(lambda ctx: allocation.uniform_plus(ctx.sizes, _projected(ctx), ctx.rc.rho_min)),
)
register(
  "global",
  _no_state,
  _rule(lambda ctx: allocation.global_ratios(ctx.scores, ctx.sizes, _level(ctx), "mean")),
)
register(
  "lamp",
  _no_state,
  _rule(lambda ctx: allocation.global_ratios(ctx.scores, ctx.sizes, _level(ctx), "lamp")),
)


# --------------------------------------------------------------------------- the agent


def _ppo_init(num_layers, rc: RoundConfig, rng):
  return {
    "agent": ppo.init_agent(rng, num_layers, rc.ppo),
    "best_reward": jnp.full((), -jnp.inf, jnp.float32),
  }


def _ppo_step(ctx: Context, state, rng):
  """While the search runs (``ctx.searching``): propose ``P`` allocations, score them, one PPO
  update, apply the policy's mode. Afterwards: the policy's mode, with no candidate scored."""
  return _search_or_apply(ctx, state, rng, _ppo_search, _ppo_apply)


def _ppo_search(ctx: Context, state, rng):
  cfg = ctx.rc.ppo
  agent = state["agent"]
  u, logp, _ = ppo.propose(agent.params, ctx.obs, rng, cfg)
  if u.shape[0] == 1:
    # One candidate: its advantage, centred within the round, is 0 whatever it earns, so the
    # update cannot move the policy; its reward (recovery steps + reward pass) is not computed.
    agent, m = ppo.ppo_update(agent, ctx.obs, u, logp, jnp.zeros((1,), jnp.float32), cfg)
    ratios = _offsets_to_ratios(ctx, ppo.mode_offsets(agent.params, ctx.obs, cfg)[None])[0]
    best = state["best_reward"]
    return ratios, {"agent": agent, "best_reward": best}, {**m, "best_reward": best}
  candidates = _offsets_to_ratios(ctx, u)
  scored = ctx.evaluate(candidates)
  agent, m = ppo.ppo_update(agent, ctx.obs, u, logp, scored["reward"], cfg)
  ratios = _offsets_to_ratios(ctx, ppo.mode_offsets(agent.params, ctx.obs, cfg)[None])[0]
  best = jnp.maximum(state["best_reward"], jnp.max(scored["reward"]))
  metrics = {**_population_metrics(scored), **m, "best_reward": best}
  return ratios, {"agent": agent, "best_reward": best}, metrics


def _ppo_apply(ctx: Context, state, rng):
  offsets = ppo.mode_offsets(state["agent"].params, ctx.obs, ctx.rc.ppo)
  return _offsets_to_ratios(ctx, offsets[None])[0], state


def _search_or_apply(ctx: Context, state, rng, search, apply):
  """``search(ctx, state, rng)`` in the search rounds, else ``apply(ctx, state, rng) ->
  (ratios, state)`` with the search's metrics zeroed (``best_reward`` carried), in one
  ``lax.cond``: only the branch taken runs."""
  if ctx.rc.search_rounds < 0:
    return search(ctx, state, rng)
  shapes = jax.eval_shape(lambda: search(ctx, state, rng)[2])

  def after():
    ratios, new_state = apply(ctx, state, rng)
    metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    metrics["best_reward"] = state["best_reward"]
    return ratios, new_state, metrics

  return jax.lax.cond(ctx.searching, lambda: search(ctx, state, rng), after)


def _offsets_to_ratios(ctx: Context, u: jax.Array) -> jax.Array:
  rc = ctx.rc
  return ppo.offsets_to_ratios(
    u, ctx.sizes, ctx.projected_budget, rc.rho_min, ctx.exact, rc.free_start
  )


def _population_metrics(scored: dict) -> dict:
  r = scored["reward"]
  return {
    "candidate_reward_mean": jnp.mean(r),
    "candidate_reward_std": jnp.std(r),
    "candidate_reward_max": jnp.max(r),
  }


register("ppo", _ppo_init, _ppo_step)


# --------------------------------------------------------------------------- random search


def _rs_init(num_layers, rc: RoundConfig, rng):
  return {
    "incumbent": jnp.zeros((num_layers,), jnp.float32),
    "best_reward": jnp.full((), -jnp.inf, jnp.float32),
  }


def _rs_step(ctx: Context, state, rng):
  """(1 + (P−1)) random search with the agent's evaluation count and search rounds: the
  incumbent and ``P − 1`` log-normal perturbations of it (σ = the agent's initial σ) are scored
  on the same images; the best becomes the incumbent and is applied. After the search rounds the
  incumbent is applied with no candidate scored."""
  return _search_or_apply(ctx, state, rng, _rs_search, _rs_apply)


def _rs_search(ctx: Context, state, rng):
  cfg = ctx.rc.ppo
  noise = cfg.policy_std * jax.random.normal(rng, (cfg.population - 1, ctx.num_layers))
  u = jnp.concatenate([state["incumbent"][None], state["incumbent"][None] + noise])
  scored = ctx.evaluate(_offsets_to_ratios(ctx, u))
  i = jnp.argmax(scored["reward"])
  incumbent = u[i]
  best = jnp.maximum(state["best_reward"], scored["reward"][i])
  ratios = _offsets_to_ratios(ctx, incumbent[None])[0]
  metrics = {**_population_metrics(scored), "best_reward": best}
  return ratios, {"incumbent": incumbent, "best_reward": best}, metrics


def _rs_apply(ctx: Context, state, rng):
  return _offsets_to_ratios(ctx, state["incumbent"][None])[0], state


register("random_search", _rs_init, _rs_step)


# --------------------------------------------------------------------------- headroom probe


def _random_alloc_init(num_layers, rc: RoundConfig, rng):
  """One fixed random allocation for the whole run, drawn from ``alloc_seed`` alone (not the run's
  seed), so that one allocation can be trained under several data orders."""
  key = jax.random.PRNGKey(rc.alloc_seed)
  return {"offsets": rc.alloc_std * jax.random.normal(key, (num_layers,), jnp.float32)}


def _random_alloc_step(ctx: Context, state, rng):
  """The fixed offsets mapped onto each round's budget, exactly as the agent's mode is: the
  allocation's shape emerges as the cubic schedule tightens the budget."""
  return _offsets_to_ratios(ctx, state["offsets"][None])[0], state, {}


register("random_alloc", _random_alloc_init, _random_alloc_step)
