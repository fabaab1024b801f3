"""The PPO agent (pruning/ppo.py) and the budget projections (pruning/budget.py).

Whether the agent *learns* through the real pruning round is tested in tests/test_agent.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax.pruning import budget, ppo

CFG = ppo.PPOConfig(population=8, hidden=16)


def test_observations_are_finite_and_standardised():
  zeros = jnp.zeros((4,))
  obs = np.asarray(ppo.layer_observations(zeros, zeros, jnp.asarray([10.0, 10, 10, 10])))
  assert obs.shape == (4, ppo.OBS_DIM) and np.isfinite(obs).all()
  w = jnp.array([0.1, 0.01, 0.001, 0.0001])
  obs = np.asarray(ppo.layer_observations(w, w, jnp.asarray([1e6, 1e3, 1e4, 10.0])))
  np.testing.assert_allclose(obs[:, 0], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
  for col in (1, 2, 3):
    np.testing.assert_allclose(obs[:, col].mean(), 0.0, atol=1e-5)
  assert np.all(np.diff(obs[:, 2]) < 0)  # the ordering of mean|w| is kept


def test_propose_shapes_and_mode_is_the_mean():
  agent = ppo.init_agent(jax.random.PRNGKey(0), 3, CFG)
  obs = jnp.zeros((3, ppo.OBS_DIM))
  u, logp, mode = ppo.propose(agent.params, obs, jax.random.PRNGKey(1), CFG)
  assert u.shape == (8, 3) and logp.shape == (8, 3) and mode.shape == (3,)
  np.testing.assert_allclose(mode, ppo.mode_offsets(agent.params, obs, CFG))
  np.testing.assert_allclose(np.asarray(u).mean(0), mode, atol=3 * CFG.policy_std / np.sqrt(8))
  # log-probabilities are the Gaussian's, per layer
  sd = CFG.policy_std
  want = (
    -0.5 * ((np.asarray(u) - np.asarray(mode)) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
  )
  np.testing.assert_allclose(logp, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("population", [8, 5])
def test_antithetic_candidates_come_in_mirrored_pairs(population):
  cfg = dataclasses.replace(CFG, population=population, antithetic=True)
  agent = ppo.init_agent(jax.random.PRNGKey(0), 3, cfg)
  obs = jnp.zeros((3, ppo.OBS_DIM))
  u, _, mode = (np.asarray(x) for x in ppo.propose(agent.params, obs, jax.random.PRNGKey(1), cfg))
  half = (population + 1) // 2
  assert u.shape == (population, 3) and len({tuple(r) for r in u.round(6)}) == population
  pairs = u[: population - half] + u[half:]  # candidate i and i + half: mu + se and mu - se
  np.testing.assert_allclose(pairs, np.broadcast_to(2 * mode, pairs.shape), atol=1e-5)
  # off (the default): no pair is mirrored
  u, _, mode = (np.asarray(x) for x in ppo.propose(agent.params, obs, jax.random.PRNGKey(1), CFG))
  s = u[:, None] + u[None] - 2 * mode
  assert np.abs(s).max(-1)[~np.eye(len(u), dtype=bool)].min() > 1e-3


@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_logits_to_budget_meets_the_budget_and_keeps_the_order(density):
  sizes = jnp.asarray([803_000.0, 1_000_000.0, 65_000.0, 65_000.0])
  z = jnp.asarray([1.0, -0.5, 2.0, 0.0])
  out = np.asarray(budget.logits_to_budget(z, sizes, density, 0.02))
  got = (out * np.asarray(sizes)).sum() / np.asarray(sizes).sum()
  assert density - 1e-5 <= got <= density + 1e-7
  assert list(np.argsort(out)) == list(np.argsort(np.asarray(z)))
  equal = np.asarray(budget.logits_to_budget(jnp.zeros(4), sizes, density, 0.02))
  np.testing.assert_allclose(equal, density, rtol=1e-4)  # equal logits: uniform


def test_ppo_loss_is_the_clipped_surrogate():
  agent = ppo.init_agent(jax.random.PRNGKey(0), 2, CFG)
  obs = jnp.zeros((2, ppo.OBS_DIM))
  u, logp, _ = ppo.propose(agent.params, obs, jax.random.PRNGKey(3), CFG)
  old = logp - jnp.linspace(-0.5, 0.5, logp.size).reshape(logp.shape)  # ratios away from 1
  adv = jnp.linspace(-1.0, 1.0, 8)
  loss, m = ppo.ppo_loss(agent.params, obs, u, old, adv, CFG)
  ratio = np.exp(np.asarray(logp - old)).reshape(-1)
  a = np.repeat(np.asarray(adv), 2)
  want = -np.mean(np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a))
  np.testing.assert_allclose(m["policy_loss"], want, rtol=1e-5)


@pytest.mark.parametrize("favoured", [0, 1])
def test_update_moves_the_policy_toward_better_candidates(favoured):
  """Opposite rewards move the policy's mean in opposite directions (the real update)."""
  agent = ppo.init_agent(jax.random.PRNGKey(0), 2, CFG)
  obs = jnp.zeros((2, ppo.OBS_DIM))
  before = np.asarray(ppo.mode_offsets(agent.params, obs, CFG))
  for i in range(5):
    u, logp, _ = ppo.propose(agent.params, obs, jax.random.PRNGKey(i), CFG)
    rewards = u[:, favoured] - u[:, 1 - favoured]
    agent, m = ppo.ppo_update(agent, obs, u, logp, rewards, CFG)
  after = np.asarray(ppo.mode_offsets(agent.params, obs, CFG))
  gap = (after - before)[favoured] - (after - before)[1 - favoured]
  assert gap > 0.2, (before, after)
  assert int(agent.updates) == 5


def test_centred_advantages():
  np.testing.assert_allclose(
    ppo.centred_advantages(jnp.asarray([1.0, 2.0, 3.0])), [-1.2247449, 0.0, 1.2247449], rtol=1e-5
  )
  np.testing.assert_array_equal(ppo.centred_advantages(jnp.asarray([0.9, 0.9])), [0.0, 0.0])


# --------------------------------------------------------------------------- budget projection


def test_project_to_budget_meets_budget():
  rng = np.random.default_rng(0)
  project = jax.jit(budget.project_to_budget, static_argnames="rho_min")
  rho_min = 0.02
  checked = 0
  for _ in range(200):
    num_layers = int(rng.integers(1, 9))
    rho = rng.uniform(rho_min, 1.0, num_layers).astype(np.float32)
    sizes = rng.integers(10, 2_000_000, num_layers).astype(np.float32)
    density = float((rho * sizes).sum() / sizes.sum())
    max_density = float(rng.uniform(0.03, 0.99))
    out = np.asarray(project(rho, sizes, max_density, rho_min=rho_min))
    assert np.all(out >= rho_min - 1e-7) and np.all(out <= 1.0 + 1e-7)
    new_density = float((out * sizes).sum() / sizes.sum())
    if density <= max_density:
      np.testing.assert_array_equal(out, rho)
    elif rho_min > max_density:
      np.testing.assert_allclose(out, rho_min)
    else:
      checked += 1
      assert abs(new_density - max_density) <= 1e-4 * max_density
      assert np.all(out <= np.maximum(rho, rho_min) + 1e-6)  # only scaled down
  assert checked > 50


def test_project_to_budget_infeasible_returns_rho_min():
  out = budget.project_to_budget(jnp.array([0.5, 0.9]), jnp.array([100.0, 300.0]), 0.01, 0.02)
  np.testing.assert_allclose(out, [0.02, 0.02])


def test_project_to_budget_saturating_layers():
  # One layer pinned at rho_min after scaling: the others absorb the budget.
  rho = jnp.array([1.0, 1.0, 0.025])
  sizes = jnp.array([100.0, 100.0, 100.0])
  out = np.asarray(budget.project_to_budget(rho, sizes, 0.5, 0.02))
  np.testing.assert_allclose((out * 100).sum() / 300, 0.5, rtol=1e-4)
  np.testing.assert_allclose(out[2], 0.02)
  np.testing.assert_allclose(out[0], out[1])
