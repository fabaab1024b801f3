"""One pruning round, inside the compiled ARSP step.

Every ``prune_every`` steps of the pruning phase a round:

1. re-estimates batchnorm statistics under the current masks and measures the current
   allocation on the first 256 reward images, with no recovery (``round_accuracy``, and
   ``proxy_reward`` = ``round_accuracy − λ · density before the round``: rough progress figures,
   standard error ~2 points, **not** the agent's reward, which ``train/candidates.py`` computes
   with ``pruning/rounds.reward`` and the controller reports as ``candidate_reward_*``; the
   epochs' validation accuracy is the figure to read);
2. computes the round's density budget and temperature (``pruning/rounds.py``, with every
   round setting) and the layers' survival scores;
3. asks the method's controller (``pruning/controllers.py``) for keep ratios — the PPO agent
   scores a population of candidate allocations with ``Context.evaluate``
   (``train/candidates.py``);
4. redraws every layer's mask for those ratios: weighted reservoir sampling at the round's
   temperature (annealed to 0 over the budget rounds when ``temperature_anneal``), or top-k.

One-shot methods prune in the first round only; the control keeps every connection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from arsp_jax.pruning import budget as budget_lib
from arsp_jax.pruning import controllers, ppo, reservoir, scores
from arsp_jax.pruning import rounds as rounds_lib
from arsp_jax.pruning.rounds import RoundConfig
from arsp_jax.train import candidates
from arsp_jax.train import model_fns as fns
from arsp_jax.train.state import (
  LayerInfo,
  TrainState,
  clip_binary_kernels,
  layer_density,
  overall_density,
  prunable_kernels,
  unflatten,
)

Array = jax.Array

#: Reward images on which a round measures the current allocation's accuracy (a metric). At P = 1
#: (no candidates scored) 1,024 images were ~40% of the MLP's round (measured: 22.6 of ~55 ms).
ROUND_METRIC_IMAGES = 256


def init_prune_state(rng, info: LayerInfo, rc: RoundConfig):
  """(controller state, round bookkeeping) at the start of the pruning phase."""
  ctrl = controllers.get(rc.controller).init(info.num_layers, rc, rng)
  return ctrl, {"round": jnp.zeros((), jnp.int32)}


def layer_scores(rng, params, grad_ema, info: LayerInfo, rc: RoundConfig) -> dict:
  kernels = prunable_kernels(params, info)
  if rc.score == "random":
    # Uniform scores from the run's RNG: a random mask of exactly k connections.
    return {
      p: jax.random.uniform(jax.random.fold_in(rng, 1000 + i), kernels[p].shape)
      for i, p in enumerate(info.paths)
    }
  grads = None
  if rc.score != "magnitude":
    grads = {p: jnp.broadcast_to(grad_ema[p], kernels[p].shape) for p in info.paths}
  return scores.layer_scores(rc.score, kernels, grads)


def masks_from_scores(rng, sc: dict, keep_ratios, info: LayerInfo, rc: RoundConfig, temperature):
  """Every layer's reservoir (or top-k, at temperature 0) mask for ``keep_ratios [L]``."""
  ratios = {p: keep_ratios[i] for i, p in enumerate(info.paths)}
  flat = reservoir.reservoir_masks(
    rng,
    sc,
    ratios,
    temperature=temperature,
    granularity=rc.granularity,
    channel_multiple=rc.channel_multiple,
  )
  return unflatten({p: flat[p].astype(jnp.float32) for p in info.paths})


def compute_masks(rng, params, grad_ema, keep_ratios, info: LayerInfo, rc: RoundConfig):
  """Masks for ``keep_ratios`` from the run's score at the configured temperature."""
  sc = layer_scores(rng, params, grad_ema, info, rc)
  return masks_from_scores(rng, sc, keep_ratios, info, rc, rc.temperature)


def observations(state: TrainState, info: LayerInfo) -> Array:
  kernels = prunable_kernels(state.params, info)
  mean_w = jnp.stack([jnp.mean(jnp.abs(kernels[p])) for p in info.paths])
  mean_g = jnp.stack([jnp.mean(state.grad_ema[p]) for p in info.paths])
  return ppo.layer_observations(mean_w, mean_g, info.sizes)


def model_functions(model, info: LayerInfo, chunk: int = 0) -> dict:
  """The functions of the model that candidate scoring needs (``chunk``: images per pass)."""

  def logits(params, bs, masks, images):
    return fns.logits_on(model, params, bs, masks, images, chunk)

  return {
    "loss_fn": lambda *a: _loss_grad_aux(fns.make_loss_fn(model), *a),
    "recalibrate": lambda p, m, bs, x: fns.recalibrate_batch_stats(model, p, m, bs, x, chunk),
    "logits": logits,
    "clip": lambda p: clip_binary_kernels(p, info),
    "density": lambda m: overall_density(m, info),
  }


def _loss_grad_aux(loss_fn, params, bs, masks, images, labels):
  loss, (_, new_bs) = loss_fn(params, bs, masks, images, labels)
  return loss, new_bs


def pruning_round(model, info: LayerInfo, rc: RoundConfig, state: TrainState, aux, reward_fn=None):
  """One pruning round (see the module docstring). Returns ``(state, round metrics)``.

  ``reward_fn(ratios [P, L]) -> [P]``, if given, replaces the measured reward (the tests
  drive the real round with synthetic rewards).
  """
  rng, r_ctrl, r_mask = jax.random.split(state.rng, 3)
  round_idx = state.prune["round"]
  density_before = overall_density(state.masks, info)
  bs = fns.recalibrate_batch_stats(
    model, state.params, state.masks, state.batch_stats, aux["calib"], rc.eval_batch
  )
  # The round's accuracy metric (history, TensorBoard; never the agent's reward) is read on the
  # first ROUND_METRIC_IMAGES reward images: on all 4,000 it was ~3/4 of a round without
  # candidates (P = 1 or a rule), and on 1,024 still ~40%, for a number that steers nothing.
  n = min(ROUND_METRIC_IMAGES, aux["val_image"].shape[0])
  acc = fns.accuracy_on(
    model, state.params, bs, state.masks, aux["val_image"][:n], aux["val_label"][:n], rc.eval_batch
  )
  budget = rounds_lib.budget_density(round_idx, rc) if rc.target_density >= 0 else None

  def decide(_):
    """Scores, the controller's keep ratios and their masks (one-shot methods: first round only,
    so later rounds compute none of it)."""
    temperature = rounds_lib.round_temperature(round_idx, rc)
    sc = layer_scores(r_mask, state.params, state.grad_ema, info, rc)
    masks_for = lambda r: masks_from_scores(r_mask, sc, r, info, rc, temperature)
    if reward_fn is None:
      view = state.replace(batch_stats=bs)
      mf = model_functions(model, info, rc.eval_batch)
      evaluate = candidates.make_evaluator(mf, rc, view, aux, masks_for)
    else:
      evaluate = lambda r: {"reward": reward_fn(r)}
    ctx = controllers.Context(
      sizes=info.sizes,
      shapes=info.shapes,
      budget=budget,
      slack=budget_lib.rounding_slack(info.sizes),
      scores=[sc[p] for p in info.paths],
      obs=observations(state, info),
      evaluate=evaluate,
      rc=rc,
      round=round_idx,
    )
    ratios, ctrl, cmetrics = controllers.get(rc.controller).step(ctx, state.agent, r_ctrl)
    return masks_for(ratios), ratios, ctrl, cmetrics

  def keep(_):
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(decide, None)[3])
    return state.masks, state.keep_ratios, state.agent, zeros

  if rc.controller == "none":  # the control keeps every connection it started with
    masks, ratios, ctrl, cmetrics = keep(None)
  elif rc.oneshot:
    masks, ratios, ctrl, cmetrics = jax.lax.cond(round_idx == 0, decide, keep, None)
  else:
    masks, ratios, ctrl, cmetrics = decide(None)
  state = state.replace(
    rng=rng, masks=masks, keep_ratios=ratios, batch_stats=bs, agent=ctrl,
    prune={"round": round_idx + 1},
  )  # fmt: skip
  metrics = {
    "proxy_reward": rounds_lib.penalised(acc, density_before, rc),
    "round_accuracy": acc,
    "round_density": density_before,
    "new_density": overall_density(masks, info),
    "keep_ratios": ratios,
    "layer_density": layer_density(masks, info),
    "did_round": jnp.ones((), jnp.bool_),
    "controller": cmetrics,
  }
  return state, metrics
