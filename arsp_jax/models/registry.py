"""Binary network architectures (Flax Linen).

Every model is called as ``model.apply(variables, images, train=bool)`` with
``variables = {'params', 'batch_stats', 'masks'}``; images are NHWC float32.
Binary layers (``BinaryDense``/``BinaryConv``) own a ``masks`` entry; full
precision layers (by default the first and the last, as in the BNN literature)
do not and are never pruned.

Batchnorm statistics: ``train=True`` normalises with the batch statistics and
updates the running averages (``mutable=['batch_stats']``); under ``jax.jit``
with the batch sharded over a device mesh the batch statistics are computed over
the *global* batch, so they are synchronised across devices without an
``axis_name``.  ``bn_momentum=0.0`` turns a train-mode pass into an exact
re-estimation of the statistics from that pass's batch (used after a mask
change: see ``step.recalibrate_batch_stats``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from arsp_jax.errors import ConfigError
from arsp_jax.models.binary import BinaryDense
from arsp_jax.registry import Registry

Array = jax.Array


def batch_norm(
  train: bool, momentum: float, name: str | None = None, scale_init=nn.initializers.ones
):
  return nn.BatchNorm(
    use_running_average=not train, momentum=momentum, epsilon=1e-5, name=name, scale_init=scale_init
  )


class BinaryNet(nn.Module):
  """Options every model shares.

  ``binary_first``/``binary_last``: binarize the first/last layer too (full precision by
  default, the BNN literature's standard); ``binary_activations``: sign activations (BNN/XNOR
  style); ``scale``: XNOR per-output-channel scales; ``bn_momentum``: batchnorm running-average
  momentum; ``clip``: STE clipping threshold and latent-weight range.
  """

  num_classes: int = 10
  binary_first: bool = False
  binary_last: bool = False
  binary_activations: bool = False
  scale: bool = False
  bn_momentum: float = 0.9
  clip: float = 1.0


def classifier(module: nn.Module, x: Array) -> Array:
  """The output layer ``out``: a float Dense, or with ``binary_last`` a BinaryDense with bias
  and XNOR scale (every model uses this rule)."""
  if module.binary_last:
    return BinaryDense(
      module.num_classes,
      use_bias=True,
      scale=True,
      clip=module.clip,
      binary_inputs=module.binary_activations,
      name="out",
    )(x)
  return nn.Dense(module.num_classes, name="out")(x)


MODELS: Registry[Callable[..., nn.Module]] = Registry("model", ConfigError)


def register(name: str):
  """``@register("name")`` on a model class (``MODELS.register``)."""
  return MODELS.register(name)


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds a model by registry name; unknown names or options raise ``ConfigError``."""
  cls = MODELS.get(name)
  fields = set(getattr(cls, "__dataclass_fields__", {}))
  unknown = set(kwargs) - fields
  if unknown:
    raise ConfigError(
      f"Model {name!r} has no option(s) {sorted(unknown)}; "
      f"valid options: {sorted(fields - {'parent', 'name'})}."
    )
  return cls(num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, rng: Array, image_shape: Sequence[int]) -> dict:
  """Initialises ``{'params', 'batch_stats', 'masks'}`` for one example shape (H, W, C)."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  variables = model.init({"params": rng}, x, train=False)
  variables = dict(variables)
  variables.setdefault("batch_stats", {})
  variables.setdefault("masks", {})
  return variables
