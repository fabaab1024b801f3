"""Functions of a model the steps and the pruning round share: loss, accuracy, batchnorm
re-estimation under masks."""

from __future__ import annotations

from collections.abc import Mapping

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


def image_chunks(x: Array, size: int) -> Array:
  """``x [n, ...]`` as ``[n // size, size, ...]`` for ``lax.map`` (the last ``n % size`` rows
  dropped). Row ``j`` holds images ``j, j + k, j + 2k, ...`` (``k = n // size``): a batch sharded
  in contiguous blocks over the devices stays sharded along every chunk."""
  k = x.shape[0] // size
  return jnp.swapaxes(jnp.reshape(x[: k * size], (size, k) + x.shape[1:]), 0, 1)


def unchunk(y: Array) -> Array:
  """The inverse of :func:`image_chunks`: ``[k, size, ...]`` back to image order ``[k*size, ...]``."""
  return jnp.reshape(jnp.swapaxes(y, 0, 1), (-1,) + y.shape[2:])


def recalibrate_batch_stats(
  model: nn.Module, params, masks, batch_stats, images: Array, chunk: int = 0
):
  """Batchnorm statistics of ``images`` under ``masks``: one train-mode pass at momentum 0,
  exact for the whole set when ``chunk`` is 0 (or covers it).

  With ``0 < chunk < len(images)``, passes of ``chunk`` images (memory: one chunk's
  activations): each layer's mean is the mean of the chunks' means and its variance the mean
  of their variances plus the variance of their means — the whole set's moments of that layer's
  inputs, where each chunk is normalised by its own statistics in the layers below (the
  cumulative averaging that BN re-estimation tools use).
  """
  if not batch_stats:
    return batch_stats
  recal = model.clone(bn_momentum=0.0)

  def stats(x):
    _, new_vars = recal.apply(
      {"params": params, "batch_stats": batch_stats, "masks": masks},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return new_vars["batch_stats"]

  if not chunk or chunk >= images.shape[0]:
    return stats(images)
  return _combine_moments(jax.lax.map(stats, image_chunks(images, chunk)))


def _combine_moments(node):
  """Per-chunk batchnorm statistics ``[k, ...]`` -> the whole set's."""
  if isinstance(node, Mapping) and set(node) == {"mean", "var"}:
    mean = jnp.mean(node["mean"], 0)
    return {"mean": mean, "var": jnp.mean(node["var"], 0) + jnp.var(node["mean"], 0)}
  if isinstance(node, Mapping):
    return {k: _combine_moments(v) for k, v in node.items()}
  return jnp.mean(node, 0)


def logits_on(model, params, batch_stats, masks, images, chunk: int = 0) -> Array:
  """Eval-mode logits of ``images``, in passes of ``chunk`` images (0: all at once)."""
  variables = {"params": params, "batch_stats": batch_stats, "masks": masks}
  fn = lambda x: model.apply(variables, x, train=False)
  if not chunk or chunk >= images.shape[0]:
    return fn(images)
  return unchunk(jax.lax.map(fn, image_chunks(images, chunk)))


def accuracy_on(model, params, batch_stats, masks, images, labels, chunk: int = 0) -> Array:
  logits = logits_on(model, params, batch_stats, masks, images, chunk)
  labels = labels[: logits.shape[0]]
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
