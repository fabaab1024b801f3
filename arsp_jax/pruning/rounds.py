"""A pruning round's settings and its reward, in one place.

* :class:`RoundConfig` — every static setting of the pruning rounds: the budget (target density,
  the rounds over which it tightens, exact or ceiling), the smallest keep ratio ``rho_min``, the
  sampling temperature, the reward's ``λ`` and metric, the candidates' recovery, and the agent's
  own hyperparameters (``ppo``: :class:`~arsp_jax.pruning.ppo.PPOConfig`). The round
  (``train/round.py``), the candidate scoring (``train/candidates.py``) and every controller
  (``controllers.Context.rc``) read it; ``train/phases.round_config`` fills it from the
  ``arsp`` section of the run's configuration, whose keys have the same names as its fields.
* :func:`reward` — the one formula the agent and random search maximise:
  ``metric − λ · density``, with ``metric`` the accuracy or minus the cross-entropy
  (``reward_metric``). In exact-budget mode every candidate of a round has the same density, so
  the reward ranks them by the metric alone.
* :func:`budget_density` and :func:`round_temperature` — the round's density budget (cubic
  schedule) and sampling temperature.

A new reward setting: a field here and its use in :func:`reward`; to make it a command-line
setting, a key of the same name in ``configs/base.py`` (with its rule in
``configs/validation.py``) reaches the field with no renaming.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from arsp_jax.pruning import budget as budget_lib
from arsp_jax.pruning import ppo

Array = jax.Array

REWARD_METRICS = ("accuracy", "loss")


@dataclasses.dataclass(frozen=True)
class RoundConfig:
  """Static settings of the pruning phase (hashable: a compiled step's cache key).

  Fields whose name is a key of the configuration's ``arsp`` section take its value
  (``train/phases.round_config``); the others are derived from the method and the run's length.
  """

  # -- masks
  score: str = "magnitude"
  granularity: str = "weight"
  temperature: float = 0.0
  temperature_anneal: bool = False  # T falls linearly to 0 over the budget rounds
  channel_multiple: int = 1
  # -- when rounds run, what they track
  prune_every: int = 25
  grad_ema_decay: float = 0.9
  per_weight_grads: bool = True  # False: only each layer's mean |dL/dw| (agent observation)
  # -- the budget
  target_density: float = -1.0  # < 0: no budget
  budget_rounds: int = 1  # rounds over which the budget tightens to target
  total_rounds: int = 1
  exact_budget: bool = True  # ratios meet the budget exactly (False: it is only a ceiling)
  rho_min: float = 0.02  # smallest keep ratio of any layer
  free_start: float = 0.5  # budget off: the keep ratio of the agent's zero offset
  # -- who sets the ratios
  controller: str = "ppo"  # a name in controllers.REGISTRY (see methods.py)
  search_rounds: int = -1  # agent / random search: rounds that score candidates (< 0: all)
  oneshot: bool = False  # masks set by the first round only, then frozen
  alloc_seed: int = 0  # random_alloc: the seed and σ of its one fixed allocation
  alloc_std: float = 1.0
  # -- the reward of a candidate allocation
  lambda_density: float = 0.1  # λ in reward = metric − λ·density
  reward_metric: str = "accuracy"  # accuracy | loss (the reward uses minus the loss)
  recovery_steps: int = 20  # K SGD steps per candidate before its reward is read
  recovery_batch: int = 64
  recovery_lr: float = 0.01
  eval_chunk: int = 16  # candidates vmapped at once (lax.map over chunks)
  eval_batch: int = 0  # images per forward pass in the round (0: the whole set at once)
  # -- the agent's own hyperparameters (population, learning rate, ...)
  ppo: ppo.PPOConfig = ppo.PPOConfig()


def reward(accuracy: Array, loss: Array, density: Array, rc: RoundConfig) -> Array:
  """The reward of an allocation: ``metric − λ · density`` (see the module docstring).

  Args:
    accuracy: accuracy on the reward images (after the candidate's recovery).
    loss: mean cross-entropy on the same images.
    density: the allocation's retained fraction of the prunable connections.
    rc: the round settings (``reward_metric``, ``lambda_density``).
  """
  metric = accuracy if rc.reward_metric == "accuracy" else -loss
  return penalised(metric, density, rc)


def penalised(metric: Array, density: Array, rc: RoundConfig) -> Array:
  """``metric − λ · density``: the reward's density penalty (also applied to the round's cheap
  progress figure, ``proxy_reward``, which is not the agent's reward)."""
  return metric - rc.lambda_density * density


def budget_density(round_idx: Array, rc: RoundConfig) -> Array:
  """Cubic (Zhu & Gupta) schedule of the density budget at round ``round_idx``."""
  return budget_lib.cubic_schedule(rc.target_density, rc.budget_rounds)(round_idx)


def round_temperature(round_idx: Array, rc: RoundConfig) -> Array | float:
  """The round's sampling temperature: linearly to 0 over the budget rounds when annealed."""
  if not rc.temperature_anneal or rc.temperature == 0.0:
    return rc.temperature
  frac = jnp.minimum(1.0, (round_idx + 1.0) / max(rc.budget_rounds, 1))
  return rc.temperature * (1.0 - frac)
