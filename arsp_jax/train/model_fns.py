"""Functions of a model the steps and the pruning round share: loss, accuracy, batchnorm
re-estimation under masks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def cross_entropy(logits: Array, labels: Array) -> Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_loss_fn(model: nn.Module):
  def loss_fn(params, batch_stats, masks, images, labels):
    variables = {"params": params, "batch_stats": batch_stats, "masks": masks}
    logits, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, labels))
    return loss, (logits, new_vars["batch_stats"])

  return loss_fn


def recalibrate_batch_stats(model: nn.Module, params, masks, batch_stats, images: Array):
  """Exact batchnorm statistics of ``images`` under ``masks`` (one train-mode pass, momentum 0)."""
  if not batch_stats:
    return batch_stats
  recal = model.clone(bn_momentum=0.0)
  _, new_vars = recal.apply(
    {"params": params, "batch_stats": batch_stats, "masks": masks},
    images,
    train=True,
    mutable=["batch_stats"],
  )
  return new_vars["batch_stats"]


def accuracy_on(model, params, batch_stats, masks, images, labels) -> Array:
  logits = model.apply(
    {"params": params, "batch_stats": batch_stats, "masks": masks}, images, train=False
  )
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
