"""The BinaryConnect MLP (the default model)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from arsp_jax.models.binary import BinaryDense
from arsp_jax.models.registry import BinaryNet, batch_norm, classifier, register

Array = jax.Array


@register("mlp")
class MLP(BinaryNet):
  """BinaryConnect MLP: ``flatten -> [Dense -> BN -> act] * len(hidden) -> Dense``.

  Defaults follow the reference protocol in CALIBRATION.md (784-1024-1024-10,
  binary hidden weights, full-precision output layer).  ``binary_first`` keeps
  the input layer binary (BinaryConnect's MLP does; its inputs stay real).
  With ``binary_activations`` hidden activations are ``sign`` (BNN style) and
  feed the next binary layer as +-1.
  """

  hidden: Sequence[int] = (1024, 1024)
  binary_first: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      name = f"fc{i + 1}"
      if i == 0 and not self.binary_first:
        x = nn.Dense(width, use_bias=False, name=name)(x)
      else:
        x = BinaryDense(
          width,
          scale=self.scale,
          clip=self.clip,
          binary_inputs=self.binary_activations and i > 0,
          name=name,
        )(x)
      x = batch_norm(train, self.bn_momentum, name=f"bn{i + 1}")(x)
      x = jnp.clip(x, -1, 1) if self.binary_activations else nn.relu(x)
    x = classifier(self, x)
    return x
