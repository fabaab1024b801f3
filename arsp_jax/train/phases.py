"""How a run is divided into phases, and what each phase trains with.

``plan_phases`` lists the phases of a method (dense -> pruning -> fine-tuning);
``round_config`` turns the configuration into the static settings of the pruning rounds
(``pruning/rounds.RoundConfig``: a key of the ``arsp`` section reaches the field of the same
name, ``same_named``; the method and the phase's length set the derived ones);
``phase_schedule`` / ``phase_optimizer`` give each phase's learning rate and optimizer, and
``optimizer_key`` everything they depend on (the compiled-step cache key).
"""

from __future__ import annotations

import dataclasses
import math

import optax

from arsp_jax.errors import ConfigError
from arsp_jax.pruning import budget as budget_lib
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.pruning import ppo
from arsp_jax.pruning.rounds import RoundConfig
from arsp_jax.train import step as step_lib


def plan_phases(cfg) -> list[tuple[str, int]]:
  """``[(phase, epochs)]`` in execution order for the configured method."""
  dense_epochs = 0 if cfg.init_from else cfg.epochs
  phases = [("dense", dense_epochs)]
  if methods_lib.get(cfg.method) is not None:
    # Every pruning method (and the unpruned control) runs the same phases: "arsp" is the
    # pruning phase, whichever method sets the masks in it.
    phases += [("arsp", cfg.arsp.epochs), ("finetune", cfg.finetune.epochs)]
  return phases


def same_named(cls, section) -> dict:
  """The fields of dataclass ``cls`` that are keys of config ``section``, cast to the field's
  type (configuration keys and dataclass fields share their names: no renaming layer)."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in section and isinstance(f.default, (bool, int, float, str)):
      out[f.name] = type(f.default)(section[f.name])
  return out


def total_rounds(cfg, steps_per_epoch: int) -> int:
  """Pruning rounds in the phase; refuses a phase too short for one."""
  a = cfg.arsp
  total_steps = a.epochs * steps_per_epoch
  # A round runs at the start of every step whose input has taken a multiple of prune_every
  # updates (never at step 0): steps prune_every, 2*prune_every, ... < total_steps.
  rounds = max(total_steps - 1, 0) // a.prune_every
  if methods_lib.get(cfg.method) is not None and rounds < 1:
    raise ConfigError(
      f"The ARSP phase has {total_steps} training steps ({a.epochs} epoch(s) x "
      f"{steps_per_epoch} steps) and prunes after every {a.prune_every} steps, so no pruning round "
      f"would run. Lower --prune_every or raise --prune_epochs."
    )
  return rounds


def round_config(cfg, steps_per_epoch: int) -> RoundConfig:
  """The pruning rounds' static settings: every ``RoundConfig`` (and ``PPOConfig``) field named
  like a key of ``cfg.arsp`` takes its value; the method and the phase's length set the rest."""
  a = cfg.arsp
  rounds = total_rounds(cfg, steps_per_epoch)
  method = methods_lib.get(cfg.method) or methods_lib.REGISTRY["arsp"]
  target = a.target_sparsity
  if method.controller not in ("ppo", "random_search", "none") and (target is None or target < 0):
    raise ConfigError(
      f"--method={cfg.method} prunes to a fixed --target_sparsity; set one in [0, 1) "
      f"(got {target})."
    )
  oneshot = method.schedule == "oneshot"
  budget_rounds = 1 if oneshot else max(1, int(math.ceil(a.budget_fraction * max(rounds, 1))))
  score = method.score or a.score
  derived = dict(
    score=score,
    temperature=float(a.temperature) if method.sampled else 0.0,
    # The method's score decides (a one-shot taylor baseline needs per-weight gradients
    # whatever --score says).
    per_weight_grads=(
      a.grad_stats == "weight" or (a.grad_stats == "auto" and score not in ("magnitude", "random"))
    ),
    target_density=(1.0 - target) if target is not None and target >= 0 else -1.0,
    budget_rounds=budget_rounds,
    # the agent / random search scores candidates while the budget tightens and for
    # search_after_budget rounds more; later rounds apply its allocation at a rule's cost
    search_rounds=-1 if a.search_after_budget < 0 else budget_rounds + a.search_after_budget,
    total_rounds=max(rounds, 1),
    controller=method.controller,
    oneshot=oneshot,
    exact_budget=a.budget_mode == "exact",
    rho_min=budget_lib.resolve_rho_min(a.rho_min, target),
  )
  agent = ppo.PPOConfig(**same_named(ppo.PPOConfig, a))
  return RoundConfig(**{**same_named(RoundConfig, a), **derived, "ppo": agent})


def phase_schedule(cfg, phase: str, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate of ``phase`` as a function of the phase's step."""
  if phase == "arsp":
    return optax.constant_schedule(cfg.arsp.learning_rate)
  lr, epochs = (
    (cfg.learning_rate, cfg.epochs)
    if phase == "dense"
    else (cfg.finetune.learning_rate, cfg.finetune.epochs)
  )
  total = epochs * steps_per_epoch
  if cfg.lr_schedule == "cosine" and total > 0:
    return optax.cosine_decay_schedule(lr, total)
  return optax.constant_schedule(lr)


def optimizer_key(cfg, phase: str, steps_per_epoch: int) -> tuple:
  """Everything ``phase_optimizer`` depends on."""
  if phase == "arsp":
    return ("adam", "constant", float(cfg.arsp.learning_rate))
  lr, epochs = (
    (cfg.learning_rate, cfg.epochs)
    if phase == "dense"
    else (cfg.finetune.learning_rate, cfg.finetune.epochs)
  )
  kind = cfg.finetune.optimizer if phase == "finetune" else "adam"
  return (kind, cfg.lr_schedule, float(lr), epochs * steps_per_epoch, float(cfg.finetune.momentum))


def phase_optimizer(cfg, phase: str, steps_per_epoch: int):
  kind = cfg.finetune.optimizer if phase == "finetune" else "adam"
  return step_lib.make_optimizer(
    kind, phase_schedule(cfg, phase, steps_per_epoch), momentum=cfg.finetune.momentum
  )
