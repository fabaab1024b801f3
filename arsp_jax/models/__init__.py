"""Binary network architectures and their registry.

``get_model(name, num_classes, **options)`` builds any registered model; a new architecture
is a Flax module deriving from ``BinaryNet`` decorated with ``@register("name")`` in a module
imported below.
"""

from arsp_jax.models import cnn, mlp  # noqa: F401  (registration)
from arsp_jax.models.mlp import MLP
from arsp_jax.models.registry import (
  MODELS,
  BinaryNet,
  batch_norm,
  get_model,
  init_variables,
  register,
)

__all__ = ["MLP", "MODELS", "BinaryNet", "batch_norm", "get_model", "init_variables", "register"]
