"""Architecture description of a Flax model (the export header's layer table); needs jax/flax,
imported lazily so that :mod:`arsp_jax.export.compress` loads with numpy alone."""

from __future__ import annotations

import json

from arsp_jax.errors import ExportError
from arsp_jax.export.arrays import same_padding

# --------------------------------------------------------------------------- architecture


_LAYER_TYPES = ("BinaryDense", "BinaryConv", "Dense", "Conv", "BatchNorm")


def scale_layer_names(model, image_shape) -> set:
  """Names of the layers that carry XNOR scales (stored by the exporter, counted in sizes)."""
  return {l["name"] for l in describe_model(model, image_shape)["layers"] if l.get("scale")}


def describe_model(model, image_shape) -> dict:
  """Architecture description of a Flax model from ``arsp_jax`` (needs jax/flax).

  Runs the model once on zeros under ``nn.intercept_methods`` and records, in call order,
  every Dense/Conv/BatchNorm module with its options and input/output shapes, plus the
  model's dataclass fields.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from arsp_jax import models

  layers: list[dict] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    kind = type(mod).__name__
    if context.method_name == "__call__" and kind in _LAYER_TYPES and len(mod.path) == 1:
      rec = {
        "name": mod.path[-1],
        "type": kind,
        "in_shape": list(args[0].shape[1:]),
        "out_shape": list(out.shape[1:]),
      }
      if kind in ("BinaryDense", "Dense"):
        rec.update(features=int(mod.features), use_bias=bool(mod.use_bias))
      if kind in ("BinaryConv", "Conv"):
        ks = tuple(int(k) for k in mod.kernel_size)
        st = 1 if mod.strides is None else mod.strides
        strides = (int(st),) * 2 if isinstance(st, int) else tuple(int(s) for s in st)
        rec.update(
          features=int(mod.features),
          kernel_size=list(ks),
          strides=list(strides),
          groups=int(mod.feature_group_count),
          use_bias=bool(mod.use_bias),
          padding=explicit_padding(mod.padding, args[0].shape[1:3], ks, strides),
        )
      if kind.startswith("Binary"):
        rec.update(binary=True, scale=bool(mod.scale), binary_inputs=bool(mod.binary_inputs))
      elif kind != "BatchNorm":
        rec.update(binary=False, scale=False, binary_inputs=False)
      else:
        rec.update(epsilon=float(mod.epsilon))
      layers.append(rec)
    return out

  variables = jax.eval_shape(
    lambda: models.init_variables(model, jax.random.PRNGKey(0), tuple(image_shape))
  )
  with nn.intercept_methods(interceptor):
    jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, *image_shape), jnp.float32), train=False), variables
    )
  fields = {}
  for k in getattr(type(model), "__dataclass_fields__", {}):
    if k in ("parent", "name"):
      continue
    v = getattr(model, k)
    if isinstance(v, (bool, int, float, str)) or v is None:
      fields[k] = v
    elif isinstance(v, (tuple, list)):
      fields[k] = json.loads(json.dumps(v))
  return {
    "model": _registry_name(model),
    "fields": fields,
    "input_shape": list(image_shape),
    "layers": layers,
  }


def _registry_name(model) -> str:
  from arsp_jax import models

  for name, cls in models.MODELS.items():
    if type(model) is cls:
      return name
  raise ExportError(f"model class {type(model).__name__} is not a registered model")


def explicit_padding(padding, hw, ks, strides) -> list:
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [[0, 0], [0, 0]]
    if padding.upper() != "SAME":
      raise ExportError(f"unsupported padding {padding!r}")
    return same_padding(hw, ks, strides)
  return [[int(a), int(b)] for a, b in padding]
