"""The public pruning primitives are pure and check their inputs (chex).

Scores, reservoir masks, the budget projections, the allocation rules and the agent's
``propose``/``ppo_update`` run under ``chex.variants`` (with and without ``jit``; chex 0.1.92
has no vmap variant), each ``vmap``-ped over a batch that means something (stacked layers,
several keys or budgets, independent agents): every row equals the plain, unbatched call. Inputs of the wrong
shape or dtype raise chex's ``AssertionError``, with or without ``jit``.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax.pruning import allocation, budget, ppo, reservoir, scores

SIZES = (60, 24, 12)
SHAPES = ((6, 10), (4, 6), (3, 4))
CFG = ppo.PPOConfig(population=4, hidden=8, ppo_epochs=1)
KEY = jax.random.PRNGKey(0)
LAYER_SCORES = [jnp.abs(jnp.sin(jnp.arange(1.0, n + 1.0))) for n in SIZES]


def _mask(key, sc, ratio):
  return reservoir.reservoir_mask(key, sc, ratio, temperature=1.0)


def _agent_round(params, opt_state, seed, obs):
  """One round of an agent: its proposal, the candidates' ratios on the budget, one update."""
  agent = ppo.AgentState(params=params, opt_state=opt_state, updates=jnp.zeros((), jnp.int32))
  u, logp, mode = ppo.propose(params, obs, jax.random.fold_in(KEY, seed), CFG)
  ratios = ppo.offsets_to_ratios(u, SIZES, 0.3, 0.02)
  rewards = -jnp.sum(jnp.square(u - 0.5), axis=1)
  agent, metrics = ppo.ppo_update(agent, obs, u, logp, rewards, CFG)
  return ratios, mode, agent.params, metrics["policy_loss"]


FNS = {
  "magnitude": scores.magnitude,
  "taylor": scores.taylor,
  "seed": scores.seed,
  "mask": _mask,
  "fit": lambda r, d: budget.fit_to_budget(r, SIZES, d, 0.02),
  "project": lambda r, d: budget.project_to_budget(r, SIZES, d, 0.02),
  "logits": lambda r, d: budget.logits_to_budget(r, SIZES, d, 0.02),
  "uniform": lambda d: allocation.uniform(SIZES, d),
  "erk": lambda d: allocation.erk(SHAPES, SIZES, d, 0.02),
  "uniform_plus": lambda d: allocation.uniform_plus(SIZES, d, 0.02),
  "global": lambda d: allocation.global_ratios(LAYER_SCORES, SIZES, d, "mean"),
  "lamp": lambda d: allocation.global_ratios(LAYER_SCORES, SIZES, d, "lamp"),
  "agent": _agent_round,
}
_REFERENCE = {name: jax.jit(fn) for name, fn in FNS.items()}  # compiled once, for both variants


def _rows(name, *batched):
  """``FNS[name]`` applied to every row of the batched arguments (unbatched), stacked."""
  n = jax.tree.leaves(batched)[0].shape[0]
  outs = [_REFERENCE[name](*jax.tree.map(lambda a, i=i: a[i], batched)) for i in range(n)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


class PrimitivesTest(chex.TestCase):
  def _check(self, name, *batched, exact=False, atol=1e-6):
    """The variant of ``vmap(FNS[name])`` on the batch equals the unbatched rows."""
    got = self.variant(jax.vmap(FNS[name]))(*batched)
    want = _rows(name, *batched)
    if exact:
      chex.assert_trees_all_equal(got, want)
    else:
      chex.assert_trees_all_close(got, want, atol=atol, rtol=1e-5)
    return got

  @chex.variants(with_jit=True, without_jit=True)
  def test_scores(self):
    # vmap: a stack of equally shaped layers scores as each layer alone.
    w = jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)
    g = jnp.abs(jnp.cos(w)) + 0.1
    for name in ("magnitude", "taylor", "seed"):
      self._check(name, w, g)

  @chex.variants(with_jit=True, without_jit=True)
  def test_reservoir_mask(self):
    # vmap: several keys and ratios over one layer's scores, each an exact-k sample.
    s = jnp.abs(jnp.sin(jnp.arange(1.0, 41.0))).reshape(5, 8)
    keys = jax.random.split(KEY, 3)
    ratios = jnp.asarray([0.1, 0.5, 0.9], jnp.float32)
    got = self._check("mask", keys, jnp.broadcast_to(s, (3,) + s.shape), ratios, exact=True)
    np.testing.assert_array_equal(np.asarray(got).sum((1, 2)), [4, 20, 36])

  @chex.variants(with_jit=True, without_jit=True)
  def test_budget_projections(self):
    # vmap: one projection per (ratios, budget) row.
    rho = jnp.asarray([[0.9, 0.5, 0.1], [0.2, 0.2, 0.8]], jnp.float32)
    density = jnp.asarray([0.3, 0.6], jnp.float32)
    for name in ("fit", "project", "logits"):
      got = self._check(name, rho, density)
      kept = np.asarray(got) @ np.asarray(SIZES, np.float32) / sum(SIZES)
      assert np.all(kept <= np.asarray(density) + 1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_allocation_rules(self):
    # vmap: one allocation per budget of a batch of budgets.
    density = jnp.asarray([0.2, 0.5], jnp.float32)
    for name in ("uniform", "erk", "uniform_plus", "global", "lamp"):
      chex.assert_shape(self._check(name, density), (2, len(SIZES)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_agent_propose_and_update(self):
    # vmap: independent agents (one per seed), each as it would run alone.
    agents = _agents(2)
    obs = ppo.layer_observations(jnp.asarray([0.3, 0.2, 0.1]), jnp.ones(3), SIZES)
    batch = (agents.params, agents.opt_state, jnp.arange(2), jnp.stack([obs, obs]))
    got = self._check("agent", *batch, atol=1e-5)
    chex.assert_shape(got[0], (2, CFG.population, len(SIZES)))


@functools.cache
def _agents(n):
  """``n`` fresh agents stacked (initialised once, compiled)."""
  init = lambda key: ppo.init_agent(key, len(SIZES), CFG)
  return jax.jit(jax.vmap(init))(jax.random.split(KEY, n))


BAD_INPUTS = {
  "score w int": lambda: scores.magnitude(jnp.arange(4)),
  "score g shape": lambda: scores.taylor(jnp.ones((2, 3)), jnp.ones((3, 2))),
  "mask scores int": lambda: reservoir.reservoir_mask(KEY, jnp.arange(4), 0.5),
  "mask ratio vector": lambda: reservoir.reservoir_mask(KEY, jnp.ones(4), jnp.ones(2)),
  "topk k vector": lambda: reservoir.topk_mask(jnp.ones(4), jnp.ones(2, jnp.int32)),
  "budget sizes": lambda: budget.fit_to_budget(jnp.ones(3), (1, 2), 0.5, 0.02),
  "budget density vector": lambda: budget.logits_to_budget(jnp.ones(3), SIZES, jnp.ones(3), 0.0),
  "budget ratios int": lambda: budget.project_to_budget(jnp.ones(3, jnp.int32), SIZES, 0.5, 0.0),
  "erk shapes": lambda: allocation.erk(SHAPES[:2], SIZES, 0.5, 0.02),
  "global sizes": lambda: allocation.global_ratios([jnp.ones(3)], (4,), 0.5),
  "obs width": lambda: ppo.propose(
    ppo.init_agent(KEY, 3, CFG).params, jnp.zeros((3, ppo.OBS_DIM + 1)), KEY, CFG
  ),
  "update rewards": lambda: ppo.ppo_update(
    ppo.init_agent(KEY, 3, CFG),
    jnp.zeros((3, ppo.OBS_DIM)),
    jnp.zeros((4, 3)),
    jnp.zeros((4, 3)),
    jnp.zeros(5),
    CFG,
  ),  # fmt: skip
  "offsets layers": lambda: ppo.offsets_to_ratios(jnp.zeros((4, 2)), SIZES, 0.3, 0.02),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_wrong_shapes_and_dtypes_raise_assertion_errors(case):
  with pytest.raises(AssertionError, match="Chex"):
    BAD_INPUTS[case]()


def test_checks_also_fire_under_jit():
  with pytest.raises(AssertionError, match="Chex"):
    jax.jit(lambda r: budget.fit_to_budget(r, (1, 2), 0.5, 0.02))(jnp.ones(3))
