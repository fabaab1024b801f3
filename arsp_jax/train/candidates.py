"""Scoring candidate allocations inside the compiled step: the agent's reward.

``make_evaluator`` returns ``evaluate(ratios [P, L]) -> {"reward", "accuracy", "loss",
"density"}`` (each ``[P]``, and ``correct [P, n]`` per reward image). Every candidate is scored the same way, on the same images:

1. masks for its keep ratios (the round's scores and mask key: candidates differ only in their
   ratios);
2. ``recovery_steps`` (K) SGD-momentum steps from the current latent weights under those masks,
   on minibatches of ``recovery_batch`` images cycling through the fixed calibration set (the
   same minibatches for every candidate) — accuracy right after pruning ranks allocations
   badly (Spearman −0.07 with the fine-tuned result), a short recovery ranks them well;
3. batchnorm statistics re-estimated under the masks on the calibration images;
4. accuracy and cross-entropy on the fixed reward (validation) images;
5. the reward, ``pruning/rounds.reward``: ``metric − λ · density`` with ``metric`` the
   accuracy or minus the loss (``reward_metric``); in exact-budget mode every candidate has the
   same density, so the reward is the metric alone.

Candidates are mapped with ``jax.lax.map`` in chunks of ``eval_chunk`` (vmapped within a
chunk), so memory grows with the chunk, not with ``P``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arsp_jax.pruning import rounds as rounds_lib


def recovery_indices(num_calib: int, steps: int, batch: int) -> np.ndarray:
  """``[steps, batch]`` row indices cycling through the calibration set (static)."""
  batch = min(batch, num_calib)
  flat = np.arange(steps * batch) % max(num_calib, 1)
  return flat.reshape(steps, batch).astype(np.int32)


def make_evaluator(round_fns, rc, state, aux, masks_for):
  """``evaluate(ratios [P, L])`` for one round (see the module docstring).

  Args:
    round_fns: the step module's helpers: ``loss_fn``, ``recalibrate``, ``logits``,
      ``clip``, ``density`` (functions of the model, bound by the caller).
    rc: the static round settings (``RoundConfig``).
    state: the round's input train state (parameters, batchnorm statistics).
    aux: the fixed calibration (``calib``, ``calib_label``) and reward (``val_image``,
      ``val_label``) batches.
    masks_for: ``ratios [L] -> masks`` with the round's scores and key.
  """
  tx = optax.sgd(rc.recovery_lr, momentum=0.9)
  idx = recovery_indices(aux["calib"].shape[0], rc.recovery_steps, rc.recovery_batch)

  def recover(params, batch_stats, masks):
    def sgd_step(carry, rows):
      p, bs, opt = carry
      images, labels = aux["calib"][rows], aux["calib_label"][rows]
      grads, bs = jax.grad(round_fns["loss_fn"], has_aux=True)(p, bs, masks, images, labels)
      updates, opt = tx.update(grads, opt, p)
      return (round_fns["clip"](optax.apply_updates(p, updates)), bs, opt), None

    if rc.recovery_steps == 0:
      return params, batch_stats
    (p, bs, _), _ = jax.lax.scan(sgd_step, (params, batch_stats, tx.init(params)), idx)
    return p, bs

  def one(ratios):
    masks = masks_for(ratios)
    params, bs = recover(state.params, state.batch_stats, masks)
    bs = round_fns["recalibrate"](params, masks, bs, aux["calib"])
    logits = round_fns["logits"](params, bs, masks, aux["val_image"])
    labels = aux["val_label"][: logits.shape[0]]  # (eval_batch passes drop a remainder)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    accuracy = jnp.mean(correct)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    density = round_fns["density"](masks)
    return {
      "reward": rounds_lib.reward(accuracy, loss, density, rc),
      "accuracy": accuracy,
      "loss": loss,
      "density": density,
      "correct": correct,  # per reward image: paired comparisons between candidates
    }

  def evaluate(ratios):
    return jax.lax.map(one, ratios, batch_size=max(1, min(rc.eval_chunk, ratios.shape[0])))

  return evaluate
