"""The train state and the bookkeeping of prunable layers.

One ``TrainState`` pytree carries everything a run needs to continue: parameters, batchnorm
statistics, connection masks, optimizer state, RNG, the running mean of |dL/dw| for every
prunable kernel, the layers' keep ratios, the allocation controller's state (the PPO agent
for ARSP) and the round bookkeeping.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from arsp_jax.models import binary

Array = jax.Array
SEP = "/"


class TrainState(flax.struct.PyTreeNode):
  step: Array  # int32, steps taken in the current phase
  params: Any
  batch_stats: Any
  masks: Any  # {'layer': {'kernel': 0/1 float32}} for every prunable kernel
  opt_state: Any
  rng: Array
  grad_ema: Any  # flat dict path -> running mean of |dL/dw| (ARSP phase), else {};
  # per weight, or per layer (a scalar: mean |dL/dw|) when the score
  # does not use gradients (RoundConfig.per_weight_grads)
  keep_ratios: Array  # [L] float32
  agent: Any  # the controller's state in the pruning phase (the PPO agent for ARSP), else {}
  prune: Any  # round bookkeeping (dict of arrays), else {}


# ----------------------------------------------------------------------------
# Layer bookkeeping
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """Static description of the prunable layers, in a fixed order.

  ``paths`` are ``'layer/kernel'`` strings (sorted), ``sizes`` their connection
  counts, ``shapes`` their kernel shapes.
  """

  paths: tuple
  shapes: tuple
  sizes: tuple

  @property
  def num_layers(self) -> int:
    return len(self.paths)

  @property
  def total(self) -> int:
    return int(sum(self.sizes))

  @staticmethod
  def from_masks(masks) -> LayerInfo:
    flat = flatten(masks)
    paths = tuple(sorted(flat))
    return LayerInfo(
      paths=paths,
      shapes=tuple(tuple(flat[p].shape) for p in paths),
      sizes=tuple(int(np.prod(flat[p].shape)) for p in paths),
    )


def flatten(tree) -> dict:
  if not tree:
    return {}
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep=SEP)


def unflatten(flat: dict) -> dict:
  return traverse_util.unflatten_dict(flat, sep=SEP)


def prunable_kernels(params, info: LayerInfo) -> dict:
  flat = flatten(params)
  return {p: flat[p] for p in info.paths}


def clip_binary_kernels(params, info: LayerInfo, clip: float = 1.0):
  """BinaryConnect: clip the latent binary kernels to [-clip, clip] after each update."""
  flat = flatten(params)
  for p in info.paths:
    flat[p] = binary.clip_latent(flat[p], clip)
  return unflatten(flat)


def apply_masks_to_params(params, masks, info: LayerInfo):
  """Zeros the latent weights of pruned connections (frozen masks: they never come back)."""
  flat, fm = flatten(params), flatten(masks)
  for p in info.paths:
    flat[p] = flat[p] * fm[p]
  return unflatten(flat)


def layer_density(masks, info: LayerInfo) -> Array:
  """[L] retained fraction of each prunable layer."""
  fm = flatten(masks)
  return jnp.stack([jnp.mean(fm[p]) for p in info.paths]) if info.paths else jnp.zeros((0,))


def overall_density(masks, info: LayerInfo) -> Array:
  fm = flatten(masks)
  if not info.paths:
    return jnp.asarray(1.0)
  return sum(jnp.sum(fm[p]) for p in info.paths) / float(info.total)


def create_state(variables: dict, tx: optax.GradientTransformation, rng: Array) -> TrainState:
  params = variables["params"]
  masks = variables.get("masks", {})
  info = LayerInfo.from_masks(masks)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    masks=masks,
    opt_state=tx.init(params),
    rng=rng,
    grad_ema={},
    keep_ratios=jnp.ones((info.num_layers,), jnp.float32),
    agent={},
    prune={},
  )
