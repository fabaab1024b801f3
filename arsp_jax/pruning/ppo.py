"""The PPO agent that sets each prunable layer's keep ratio (reservoir size).

**Framing: a one-step contextual bandit per pruning round.** Each round the agent observes
every layer (:func:`layer_observations`) and proposes a *population* of ``P`` candidate
allocations at once; every candidate is scored on the same reward images
(``controllers.Context.evaluate``), the rewards are centred and scaled within the round, and
the shared policy takes a few clipped-surrogate PPO steps (``rlax.clipped_surrogate_pg_loss``,
``optax`` Adam) on the ``P`` samples. The allocation applied is the policy's *mode*. Why a
bandit and not an episode over rounds: in budget mode the density of every round is fixed by
the schedule, so an allocation does not constrain later ones; its value is measured directly by
comparing candidates on one batch, and a centred population baseline replaces a critic (whose
bootstrapped, uncentred values made the first agent's advantages depend only on buffer
position). γ and GAE therefore play no part.

**Policy.** One small MLP shared by all layers (vmapped over them; layer id and size are
features) outputs a mean ``μ_l`` of a Gaussian over the layer's *log keep-ratio offset*; one
learned ``log σ`` (clipped to ``[log min_std, log max_std]``) is shared. A candidate draws
``u_l ~ N(μ_l, σ²)`` and its ratios are ``rho_min + (1 − rho_min)·sigmoid(u_l + s)``: in
budget mode the shift ``s`` meets the budget exactly (``budget.logits_to_budget``; ``u = 0`` is
the uniform allocation); with the budget off ``s = logit(free_start)`` and the agent also
decides how much to keep (``reward = metric − λ·density``). The sigmoid has no flat region: a
ratio clipped at 1 would stop changing the reward, and nothing could be learned there.

Everything is pure and jittable with a static, hashable :class:`PPOConfig`; the inputs' shapes
and dtypes are checked with ``chex`` (observations ``[L, OBS_DIM]`` floating point, offsets and
log-probabilities ``[P, L]``, rewards ``[P]``): an ``AssertionError`` otherwise, also under
``jit``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import rlax

from arsp_jax.pruning import budget as budget_lib

OBS_DIM = 4
"""Per-layer features: layer id, log size, log mean|w|, log mean|ḡ| (the last three
standardised across layers). Not the current keep ratio (the applied allocation is the policy's
own mode: feeding it back would make the policy chase itself), nor the round's progress or
budget (the budget projection handles the density; features that change every round would
move the policy's mapping under it)."""

_LOG_EPS = 1e-12
_STD_FLOOR = 1e-2


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Static agent configuration (hashable). The round's settings the agent shares with the other
  controllers (``rho_min``, the budget, ``λ``) are in ``rounds.RoundConfig``, which holds this.

  Attributes (``population``, ``ppo_lr``, ``ppo_epochs``, ``entropy_coef`` and ``policy_std``
  are also configuration keys of the ``arsp`` section, with the same names):
    population: candidate allocations scored per round (``P``).
    clip_eps: PPO ratio clip ε (the proposal's 0.2).
    entropy_coef: weight of the entropy bonus.
    ppo_lr: Adam step size.
    max_grad_norm: global-norm gradient clip.
    ppo_epochs: Adam steps on the round's ``P`` samples.
    target_kl: the update stops early once the policy's approximate KL divergence from the
      acting policy exceeds this (per layer action), as PPO implementations commonly do.
    hidden: MLP width.
    policy_std, min_std, max_std: exploration σ of the log-ratio offsets (initial, bounds).
    antithetic: candidates in mirrored pairs ``μ ± σε`` (one more unpaired if ``P`` is odd): in
      the round's centred update the pair's shared error cancels (mirrored sampling).
  """

  population: int = 16
  clip_eps: float = 0.2
  entropy_coef: float = 0.0
  ppo_lr: float = 1e-2
  max_grad_norm: float = 1.0
  ppo_epochs: int = 16
  target_kl: float = 0.1
  hidden: int = 32
  policy_std: float = 0.5
  min_std: float = 0.05
  max_std: float = 1.0
  antithetic: bool = False


# --------------------------------------------------------------------------- observations


def _standardise(x: jax.Array) -> jax.Array:
  return (x - jnp.mean(x)) / jnp.maximum(jnp.std(x), _STD_FLOOR)


def layer_observations(mean_abs_w, mean_abs_g, sizes):
  """``[L, OBS_DIM]`` float32 features, all finite (see :data:`OBS_DIM`).

  Args:
    mean_abs_w, mean_abs_g, sizes: ``[L]`` per-layer mean |latent weight|, mean running
      |gradient| and connection count.
  """
  chex.assert_rank([mean_abs_w, mean_abs_g], 1)
  chex.assert_type([mean_abs_w, mean_abs_g], float)
  chex.assert_equal_shape([mean_abs_w, mean_abs_g])
  chex.assert_equal(np.shape(sizes), np.shape(mean_abs_w))
  w = jnp.asarray(mean_abs_w, jnp.float32)
  num = w.shape[0]
  layer_id = jnp.arange(num, dtype=jnp.float32) / max(num - 1, 1)
  cols = [
    layer_id,
    _standardise(jnp.log(jnp.asarray(sizes, jnp.float32))),
    _standardise(jnp.log(jnp.abs(w) + _LOG_EPS)),
    _standardise(jnp.log(jnp.abs(jnp.asarray(mean_abs_g, jnp.float32)) + _LOG_EPS)),
  ]
  return jnp.nan_to_num(jnp.stack(cols, axis=-1), nan=0.0, posinf=0.0, neginf=0.0)


# --------------------------------------------------------------------------- policy


class PolicyNet(nn.Module):
  """``obs [F] -> μ []``: a tanh MLP; the output layer starts near zero (uniform allocation)."""

  hidden: int

  @nn.compact
  def __call__(self, obs: jax.Array) -> jax.Array:
    gain = float(np.sqrt(2.0))
    dense = lambda f, s, n: nn.Dense(f, kernel_init=nn.initializers.orthogonal(s), name=n)
    x = nn.tanh(dense(self.hidden, gain, "hidden_0")(obs))
    x = nn.tanh(dense(self.hidden, gain, "hidden_1")(x))
    return dense(1, 0.01, "mean")(x)[..., 0]


class AgentState(flax.struct.PyTreeNode):
  """Policy parameters (``net`` and ``log_std``), optimizer state, update count."""

  params: Any
  opt_state: Any
  updates: jax.Array


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.ppo_lr, eps=1e-5))


def init_agent(rng, num_layers: int, cfg: PPOConfig) -> AgentState:
  net = PolicyNet(cfg.hidden).init(rng, jnp.zeros((OBS_DIM,), jnp.float32))
  params = {
    "net": net,
    "layer_bias": jnp.zeros((num_layers,), jnp.float32),
    "log_std": jnp.asarray(math.log(cfg.policy_std), jnp.float32),
  }
  return AgentState(
    params=params, opt_state=make_optimizer(cfg).init(params), updates=jnp.zeros((), jnp.int32)
  )


def _check_obs(obs, num_layers: int | None = None) -> None:
  chex.assert_shape(obs, (num_layers, OBS_DIM))
  chex.assert_type(obs, float)


def _mean_std(params, obs, cfg: PPOConfig):
  _check_obs(obs, params["layer_bias"].shape[0])
  mu = jax.vmap(lambda o: PolicyNet(cfg.hidden).apply(params["net"], o))(obs)
  mu = mu + params["layer_bias"]
  log_std = jnp.clip(params["log_std"], math.log(cfg.min_std), math.log(cfg.max_std))
  return mu, log_std


def _log_prob(u, mu, log_std):
  """Per-layer Gaussian log-densities ``[..., L]`` of offsets ``u [..., L]``."""
  z = (u - mu) / jnp.exp(log_std)
  return -0.5 * jnp.square(z) - log_std - 0.5 * math.log(2 * math.pi)


def propose(params, obs, rng, cfg: PPOConfig):
  """``P`` candidate offsets ``u [P, L]``, their per-layer log-probabilities ``[P, L]`` and the
  mode ``[L]``."""
  mu, log_std = _mean_std(params, obs, cfg)
  if cfg.antithetic and cfg.population > 1:
    half = jax.random.normal(rng, ((cfg.population + 1) // 2, mu.shape[0]), jnp.float32)
    eps = jnp.concatenate([half, -half])[: cfg.population]
  else:
    eps = jax.random.normal(rng, (cfg.population, mu.shape[0]), jnp.float32)
  u = mu + jnp.exp(log_std) * eps
  return u, _log_prob(u, mu, log_std), mu


def offsets_to_ratios(u, sizes, density, rho_min: float, exact: bool = True, free_start=0.5):
  """Keep ratios ``[..., L]`` of offsets ``u [..., L]`` (see the module docstring).

  Args:
    u: log keep-ratio offsets, ``[..., L]`` float.
    sizes: ``[L]`` connections per layer.
    density: the round's density budget (a scalar), or ``None``: no budget.
    rho_min: smallest keep ratio.
    exact: the ratios meet the budget exactly (else the budget is a ceiling).
    free_start: the keep ratio of ``u = 0`` when the budget is off or a ceiling.
  """
  chex.assert_type(u, float)
  chex.assert_axis_dimension(u, -1, len(sizes))

  def one(v):
    if density is None:  # the same smooth map, centred on free_start (no flat region at 1)
      centre = math.log(free_start / (1.0 - free_start))
      return rho_min + (1.0 - rho_min) * jax.nn.sigmoid(v + centre)
    if exact:
      return budget_lib.logits_to_budget(v, sizes, density, rho_min)
    ratios = jnp.clip(free_start * jnp.exp(v), rho_min, 1.0)  # budget as a ceiling
    return budget_lib.project_to_budget(ratios, sizes, density, rho_min)

  flat = jnp.reshape(u, (-1, u.shape[-1]))
  return jax.vmap(one)(flat).reshape(u.shape)


def centred_advantages(rewards: jax.Array) -> jax.Array:
  """Rewards centred and scaled within the round: ``(r − mean) / std`` (0 when all equal)."""
  r = jnp.asarray(rewards, jnp.float32)
  std = jnp.std(r)
  return jnp.where(std > 1e-12, (r - jnp.mean(r)) / jnp.maximum(std, 1e-12), 0.0)


def ppo_loss(params, obs, u, old_logp, advantages, cfg: PPOConfig):
  """Clipped surrogate minus the entropy bonus. Every layer's action of a candidate is one
  sample (``u, old_logp [P, L]``) with the candidate's advantage (``[P]``), as the shared
  per-layer policy acts: each layer's probability ratio is clipped on its own.
  Returns ``(loss, metrics)``."""
  mu, log_std = _mean_std(params, obs, cfg)
  logp = _log_prob(u, mu[None], log_std)
  log_ratio = (logp - old_logp).reshape(-1)
  ratio = jnp.exp(log_ratio)
  adv = jnp.broadcast_to(advantages[:, None], logp.shape).reshape(-1)
  pg = rlax.clipped_surrogate_pg_loss(ratio, adv, cfg.clip_eps)
  entropy = mu.shape[0] * (0.5 * math.log(2 * math.pi * math.e) + log_std)
  loss = pg - cfg.entropy_coef * entropy
  metrics = {
    "policy_loss": pg,
    "entropy": entropy,
    "approx_kl": jax.lax.stop_gradient(jnp.mean((ratio - 1.0) - log_ratio)),
    "std": jnp.exp(log_std),
  }
  return loss, metrics


def ppo_update(agent: AgentState, obs, u, old_logp, rewards, cfg: PPOConfig):
  """``ppo_epochs`` Adam steps of :func:`ppo_loss` on one round's population (a
  ``lax.scan``). Returns ``(agent, metrics)`` with the last epoch's metrics."""
  chex.assert_rank([u, old_logp], 2)
  chex.assert_type([u, old_logp, rewards], float)
  chex.assert_equal_shape([u, old_logp])
  chex.assert_shape(rewards, (u.shape[0],))
  chex.assert_axis_dimension(u, 1, obs.shape[0])
  adv = centred_advantages(rewards)
  tx = make_optimizer(cfg)
  grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)

  def epoch(carry, _):
    params, opt_state, stopped = carry
    (_, metrics), grads = grad_fn(params, obs, u, old_logp, adv, cfg)
    stopped = stopped | (metrics["approx_kl"] > cfg.target_kl)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(stopped, b, a), new, old)
    return (keep(new_params, params), keep(new_opt, opt_state), stopped), metrics

  (params, opt_state, _), metrics = jax.lax.scan(
    epoch, (agent.params, agent.opt_state, jnp.zeros((), bool)), None, length=cfg.ppo_epochs
  )
  metrics = jax.tree.map(lambda x: x[-1], metrics)
  agent = agent.replace(params=params, opt_state=opt_state, updates=agent.updates + 1)
  return agent, metrics


def mode_offsets(params, obs, cfg: PPOConfig) -> jax.Array:
  """The policy's most probable offsets ``[L]`` (the applied allocation)."""
  return _mean_std(params, obs, cfg)[0]
