"""Tests for the PPO keep-ratio agent (arsp_jax.ppo)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax.pruning import ppo

CFG = ppo.PPOConfig()
# Small agent shared by the buffer/update tests, so each jitted function compiles once.
SMALL = ppo.PPOConfig(buffer_size=5, hidden=16, gamma=0.9, gae_lambda=0.7)
SMALL_LAYERS = 3

init_jit = jax.jit(ppo.init_agent, static_argnums=(1, 2))
act_jit = jax.jit(ppo.act, static_argnames=("cfg", "greedy"))
update_jit = jax.jit(ppo.ppo_update, static_argnames="cfg")
advantages_jit = jax.jit(ppo.buffer_advantages, static_argnames="cfg")
record_jit = jax.jit(ppo.record)


# --------------------------------------------------------------------------- numpy references


def np_net(params, obs):
  """PolicyValueNet forward pass in numpy: obs [N, F] → logits [N, A], values [N]."""
  p = jax.tree.map(np.asarray, params)["params"]

  def dense(name, x):
    return x @ p[name]["kernel"] + p[name]["bias"]

  a = np.tanh(dense("actor_1", np.tanh(dense("actor_0", obs))))
  c = np.tanh(dense("critic_1", np.tanh(dense("critic_0", obs))))
  return dense("actor_out", a), dense("critic_out", c)[:, 0]


def np_log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_gae(rewards, values, last_values, discounts, lam):
  """Backward recursion A_t = δ_t + γ_t λ A_{t+1}, δ_t = r_t + γ_t v_{t+1} − v_t."""
  t_len = rewards.shape[0]
  next_values = np.concatenate([values[1:], last_values[None]], axis=0)
  adv = np.zeros_like(values)
  acc = np.zeros_like(last_values)
  for t in reversed(range(t_len)):
    delta = rewards[t] + discounts[t] * next_values[t] - values[t]
    acc = delta + discounts[t] * lam * acc
    adv[t] = acc
  return adv, adv + values


# --------------------------------------------------------------------------- observations, acting


@pytest.mark.parametrize("num_layers", [1, 4])
def test_observations_finite_for_zero_inputs(num_layers):
  zeros = jnp.zeros((num_layers,))
  obs = ppo.layer_observations(zeros, zeros, jnp.zeros((num_layers,)), 0.5)
  assert obs.shape == (num_layers, ppo.OBS_DIM)
  assert obs.dtype == jnp.float32
  assert np.all(np.isfinite(obs))


def test_observation_features():
  w = jnp.array([0.1, 0.01, 0.001, 0.0])
  g = jnp.array([1e-3, 0.0, 1e-5, 2e-4])
  rho = jnp.array([1.0, 0.5, 0.2, 0.02])
  obs = np.asarray(ppo.layer_observations(w, g, rho, 0.25))
  assert np.all(np.isfinite(obs))
  np.testing.assert_allclose(obs[:, 0], [0.0, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
  for col in (1, 2):  # standardised across layers
    np.testing.assert_allclose(obs[:, col].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(obs[:, col].std(), 1.0, rtol=1e-4)
  assert np.all(np.diff(obs[:, 1]) < 0)  # ordering of mean|w| kept
  np.testing.assert_allclose(obs[:, 3], 1.0 - np.asarray(rho), rtol=1e-6)
  np.testing.assert_allclose(obs[:, 4], rho, rtol=1e-6)
  np.testing.assert_allclose(obs[:, 5], np.log(rho), rtol=1e-6)
  np.testing.assert_allclose(obs[:, 6], np.mean(rho), rtol=1e-6)
  np.testing.assert_allclose(obs[:, 7], 0.25)
  sizes = jnp.array([10.0, 30.0, 0.0, 60.0])
  obs = np.asarray(ppo.layer_observations(w, g, rho, 0.25, layer_sizes=sizes))
  np.testing.assert_allclose(obs[:, 6], (10 * 1.0 + 30 * 0.5 + 60 * 0.02) / 100, rtol=1e-6)
  # Equal layers standardise to zeros, not NaN.
  obs = np.asarray(ppo.layer_observations(jnp.ones(3), jnp.ones(3), jnp.ones(3)))
  np.testing.assert_array_equal(obs[:, 1:3], 0.0)


def test_act_shapes_and_greedy_is_deterministic():
  num_layers = SMALL_LAYERS
  state = init_jit(jax.random.PRNGKey(0), num_layers, SMALL)
  obs = ppo.layer_observations(
    jnp.linspace(0.1, 1.0, num_layers), jnp.ones(num_layers), jnp.full((num_layers,), 0.7)
  )
  actions, logp, values = act_jit(state.params, obs, jax.random.PRNGKey(1), SMALL)
  assert actions.shape == logp.shape == values.shape == (num_layers,)
  assert actions.dtype == jnp.int32
  assert np.all((np.asarray(actions) >= 0) & (np.asarray(actions) < ppo.NUM_ACTIONS))
  assert np.all(np.asarray(logp) <= 0.0)

  logits, _ = np_net(state.params, np.asarray(obs))
  np.testing.assert_allclose(
    logp, np_log_softmax(logits)[np.arange(num_layers), np.asarray(actions)], atol=1e-5
  )

  g1 = act_jit(state.params, obs, jax.random.PRNGKey(1), SMALL, greedy=True)
  g2 = act_jit(state.params, obs, jax.random.PRNGKey(2), SMALL, greedy=True)
  np.testing.assert_array_equal(g1[0], g2[0])
  np.testing.assert_array_equal(g1[0], np.argmax(logits, axis=-1))


def test_apply_actions_clamps():
  cfg = ppo.PPOConfig(delta=0.05, rho_min=0.02)
  rho = jnp.array([1.0, 1.0, 0.5, 0.5, 0.5, 0.03, 0.02])
  actions = jnp.array([2, 0, 0, 1, 2, 0, 0], jnp.int32)
  np.testing.assert_allclose(
    ppo.apply_actions(rho, actions, cfg), [1.0, 0.95, 0.45, 0.5, 0.55, 0.02, 0.02], atol=1e-6
  )


def test_reward():
  np.testing.assert_allclose(ppo.reward(0.9, 0.4, CFG), 0.9 - 0.1 * 0.4, rtol=1e-6)


# --------------------------------------------------------------------------- budget projection


def test_project_to_budget_meets_budget():
  rng = np.random.default_rng(0)
  project = jax.jit(ppo.project_to_budget, static_argnames="rho_min")
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
  out = ppo.project_to_budget(jnp.array([0.5, 0.9]), jnp.array([100.0, 300.0]), 0.01, 0.02)
  np.testing.assert_allclose(out, [0.02, 0.02])


def test_project_to_budget_saturating_layers():
  # One layer pinned at rho_min after scaling: the others absorb the budget.
  rho = jnp.array([1.0, 1.0, 0.025])
  sizes = jnp.array([100.0, 100.0, 100.0])
  out = np.asarray(ppo.project_to_budget(rho, sizes, 0.5, 0.02))
  np.testing.assert_allclose((out * 100).sum() / 300, 0.5, rtol=1e-4)
  np.testing.assert_allclose(out[2], 0.02)
  np.testing.assert_allclose(out[0], out[1])


# --------------------------------------------------------------------------- buffer


def test_record_and_ready():
  cfg, num_layers = SMALL, SMALL_LAYERS
  state = init_jit(jax.random.PRNGKey(0), num_layers, cfg)
  obs = jnp.ones((num_layers, ppo.OBS_DIM))
  a = jnp.array([0, 2, 1], jnp.int32)
  ones = jnp.ones(num_layers)
  for t in range(cfg.buffer_size + 1):  # the last write is dropped: the buffer is full
    assert bool(ppo.ready(state, cfg)) == (t >= cfg.buffer_size)
    state = record_jit(
      state, obs * t, a, -ones, ones * t, t * 1.0, discount=0.0 if t == 1 else None
    )
  assert int(state.ptr) == cfg.buffer_size and bool(ppo.ready(state, cfg))
  np.testing.assert_allclose(state.rewards, np.arange(cfg.buffer_size))
  np.testing.assert_allclose(state.values[:, 0], np.arange(cfg.buffer_size))
  np.testing.assert_allclose(state.obs[:, 0, 0], np.arange(cfg.buffer_size))
  np.testing.assert_array_equal(state.actions[2], [0, 2, 1])
  assert float(state.discounts[1]) == 0.0
  assert float(state.discounts[0]) < 0  # unset: cfg.gamma at update time


# --------------------------------------------------------------------------- loss and GAE


def test_ppo_loss_matches_numpy():
  cfg = SMALL
  assert (cfg.clip_eps, cfg.value_coef, cfg.entropy_coef) == (0.2, 0.5, 0.05)
  state = init_jit(jax.random.PRNGKey(3), SMALL_LAYERS, cfg)
  # Perturb the parameters so the policy is far from uniform and ratios get clipped.
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda x: np.asarray(x) + rng.normal(size=x.shape).astype(np.float32), state.params
  )

  n = 6
  obs = rng.normal(size=(n, ppo.OBS_DIM)).astype(np.float32)
  actions = rng.integers(0, 3, n).astype(np.int32)
  logits, values = np_net(params, obs)
  logp_all = np_log_softmax(logits)
  logp = logp_all[np.arange(n), actions]
  old_logp = (logp + np.array([0.05, -0.1, 0.5, -0.6, 0.0, 0.3])).astype(np.float32)
  adv = rng.normal(size=n).astype(np.float32)
  returns = rng.normal(size=n).astype(np.float32)

  ratio = np.exp(logp - old_logp)
  clipped = np.clip(ratio, 0.8, 1.2)
  policy_loss = -np.mean(np.minimum(ratio * adv, clipped * adv))
  value_loss = np.mean((values - returns) ** 2)
  entropy = np.mean(-(np.exp(logp_all) * logp_all).sum(-1))
  loss = policy_loss + 0.5 * value_loss - 0.05 * entropy
  approx_kl = np.mean((ratio - 1) - np.log(ratio))
  clip_frac = np.mean(np.abs(ratio - 1) > 0.2)
  assert 0 < clip_frac < 1

  loss_jit = jax.jit(ppo.ppo_loss, static_argnames="cfg")
  got, metrics = loss_jit(params, obs, actions, old_logp, adv, returns, cfg)
  np.testing.assert_allclose(got, loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["policy_loss"], policy_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["value_loss"], value_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"], approx_kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac"], clip_frac)

  # A mask equals dropping the masked samples.
  mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
  keep = mask > 0
  masked, _ = loss_jit(params, obs, actions, old_logp, adv, returns, cfg, mask=mask)
  dropped, _ = loss_jit(
    params, obs[keep], actions[keep], old_logp[keep], adv[keep], returns[keep], cfg
  )
  np.testing.assert_allclose(masked, dropped, rtol=1e-5, atol=1e-6)


def test_compute_gae_matches_numpy():
  rng = np.random.default_rng(2)
  t_len, num_layers = 7, 3
  rewards = rng.normal(size=t_len).astype(np.float32)
  values = rng.normal(size=(t_len, num_layers)).astype(np.float32)
  last_values = rng.normal(size=num_layers).astype(np.float32)
  discounts = np.full(t_len, 0.9, np.float32)
  discounts[3] = 0.0  # episode boundary
  adv, ret = ppo.compute_gae(rewards, values, last_values, discounts, 0.8)
  ref_adv, ref_ret = np_gae(rewards, values, last_values, discounts, 0.8)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-6)


def _filled_state(rounds, seed=0):
  """A SMALL agent whose buffer holds `rounds` rounds of random data (round 2 ends an
  episode), and an observation to bootstrap from."""
  rng = np.random.default_rng(seed)
  state = init_jit(jax.random.PRNGKey(seed), SMALL_LAYERS, SMALL)
  for t in range(rounds):
    obs = jnp.asarray(rng.normal(size=(SMALL_LAYERS, ppo.OBS_DIM)), jnp.float32)
    actions, logp, values = act_jit(state.params, obs, jax.random.PRNGKey(100 + t), SMALL)
    state = record_jit(
      state,
      obs,
      actions,
      logp,
      values,
      jnp.float32(rng.normal()),
      jnp.float32(0.0 if t == 2 else -1.0),
    )
  last_obs = jnp.asarray(rng.normal(size=(SMALL_LAYERS, ppo.OBS_DIM)), jnp.float32)
  return state, last_obs


@pytest.mark.parametrize("rounds", [5, 3])
def test_ppo_update_advantages_match_numpy(rounds):
  """The GAE ppo_update uses (buffer_advantages) on a full and a partly filled buffer."""
  state, last_obs = _filled_state(rounds)
  # A negative discount in the buffer means "cfg.gamma".
  assert np.all(np.asarray(state.discounts[:rounds]) == np.where(np.arange(rounds) == 2, 0, -1))
  adv, ret, valid = advantages_jit(state, last_obs, SMALL)
  np.testing.assert_array_equal(valid, np.arange(SMALL.buffer_size) < rounds)

  _, last_values = np_net(state.params, np.asarray(last_obs))
  discounts = np.where(np.arange(rounds) == 2, 0.0, SMALL.gamma)
  ref_adv, ref_ret = np_gae(
    np.asarray(state.rewards[:rounds]),
    np.asarray(state.values[:rounds]),
    last_values,
    discounts,
    SMALL.gae_lambda,
  )
  np.testing.assert_allclose(adv[:rounds], ref_adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ret[:rounds], ref_ret, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(adv[rounds:], 0.0, atol=1e-6)

  _, metrics = update_jit(state, last_obs, SMALL)
  np.testing.assert_allclose(metrics["return_mean"], ref_ret.mean(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(metrics["advantage_std"], ref_adv.std(), rtol=1e-4, atol=1e-5)


def test_ppo_update_state_and_metrics():
  state, last_obs = _filled_state(SMALL.buffer_size)
  new_state, metrics = update_jit(state, last_obs, SMALL)
  assert int(new_state.ptr) == 0 and int(new_state.updates) == 1
  assert not bool(ppo.ready(new_state, SMALL))
  for key in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac"):
    assert np.isfinite(metrics[key]), key
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert all(jax.tree.leaves(changed))
  # Adam's step count advanced once per epoch.
  counts = [x for x in jax.tree.leaves(new_state.opt_state) if x.dtype == jnp.int32]
  assert counts and all(int(c) == SMALL.update_epochs for c in counts)


def test_ppo_update_runs_under_cond():
  state, last_obs = _filled_state(SMALL.buffer_size)
  jitted, _ = update_jit(state, last_obs, SMALL)

  @jax.jit
  def maybe_update(s, o):
    return jax.lax.cond(
      ppo.ready(s, SMALL), lambda s: ppo.ppo_update(s, o, SMALL)[0], lambda s: s, s
    )

  in_cond = maybe_update(state, last_obs)
  skipped = maybe_update(state.replace(ptr=jnp.int32(2)), last_obs)
  for a, b in zip(jax.tree.leaves(jitted.params), jax.tree.leaves(in_cond.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(in_cond.updates) == 1 and int(in_cond.ptr) == 0
  assert int(skipped.updates) == 0 and int(skipped.ptr) == 2


# --------------------------------------------------------------------------- toy problem

TOY_TARGET = 0.3
TOY_LAYERS = 3


def run_toy(cfg, seed, train_rounds, eval_rounds):
  """Bandit-like keep-ratio task: shared reward −mean_l (ρ_l − 0.3)², start at ρ = 1.

  Trains with sampled actions (act → apply_actions → reward → record → ppo_update when
  ready, under lax.scan / lax.cond), then runs greedy actions from where training ended.
  Returns the final keep ratios of both phases.
  """
  w = jnp.array([0.1, 0.05, 0.02])
  g = jnp.array([1e-3, 2e-3, 5e-4])
  total = train_rounds + eval_rounds

  def observe(rho, t):
    return ppo.layer_observations(w, g, rho, t / total)

  def train_round(carry, t):
    agent, rho, rng = carry
    rng, key = jax.random.split(rng)
    obs = observe(rho, t)
    actions, logp, values = ppo.act(agent.params, obs, key, cfg)
    rho = ppo.apply_actions(rho, actions, cfg)
    r = -jnp.mean(jnp.square(rho - TOY_TARGET))
    agent = ppo.record(agent, obs, actions, logp, values, r)
    agent = jax.lax.cond(
      ppo.ready(agent, cfg),
      lambda a: ppo.ppo_update(a, observe(rho, t + 1), cfg)[0],
      lambda a: a,
      agent,
    )
    return (agent, rho, rng), None

  def greedy_round(carry, t):
    agent, rho = carry
    actions, _, _ = ppo.act(agent.params, observe(rho, t), None, cfg, greedy=True)
    return (agent, ppo.apply_actions(rho, actions, cfg)), None

  @jax.jit
  def run(rng):
    agent = init_jit(jax.random.fold_in(rng, 1), TOY_LAYERS, cfg)
    rho = jnp.ones((TOY_LAYERS,))
    (agent, rho_train, _), _ = jax.lax.scan(
      train_round, (agent, rho, rng), jnp.arange(train_rounds)
    )
    (_, rho_greedy), _ = jax.lax.scan(
      greedy_round, (agent, rho_train), jnp.arange(train_rounds, total)
    )
    return rho_train, rho_greedy, agent.updates

  return run(jax.random.PRNGKey(seed))


TOY_TRAIN_ROUNDS = 8000
TOY_EVAL_ROUNDS = 40


def test_toy_keep_ratio_task():
  _, rho, updates = run_toy(CFG, 0, TOY_TRAIN_ROUNDS, TOY_EVAL_ROUNDS)
  assert int(updates) == TOY_TRAIN_ROUNDS // CFG.buffer_size
  np.testing.assert_array_less(np.abs(np.asarray(rho) - TOY_TARGET), 0.1 + 1e-6)
