"""Architecture description of a Flax model: the export header's layer table and its graph.

Needs jax/flax, imported lazily so that :mod:`arsp_jax.export.compress` loads with numpy alone.
:func:`describe_model` traces the model once (``jax.make_jaxpr`` on abstract variables) with
every top-level Dense/Conv/BatchNorm call inside a named scope, and records

* ``layers``: those modules in call order with their options and shapes;
* ``graph``: the dataflow as a list of ops over numbered tensors (0: the input images), each a
  layer call or one of the few array ops models use between layers (``clip``, ``relu``,
  ``add``, ``div``, ``reshape``, ``broadcast``, ``fill``, ``reduce_sum``, ``window_max``,
  ``window_sum``; see :mod:`arsp_jax.export.graph`).  The engines run this list, so a model
  built from these layer types and ops exports without engine changes.
"""

from __future__ import annotations

import json
import re

from arsp_jax.errors import ExportError
from arsp_jax.export.arrays import same_padding

_LAYER_TYPES = ("BinaryDense", "BinaryConv", "Dense", "Conv", "BatchNorm")
_SCOPE = "layer@"


def scale_layer_names(model, image_shape) -> set:
  """Names of the layers that carry XNOR scales (stored by the exporter, counted in sizes)."""
  return {l["name"] for l in describe_model(model, image_shape)["layers"] if l.get("scale")}


def layer_record(mod, in_shape, out_shape) -> dict:
  """One layer's entry of the layer table."""
  kind = type(mod).__name__
  rec = {
    "name": mod.path[-1],
    "type": kind,
    "in_shape": list(in_shape),
    "out_shape": list(out_shape),
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
      padding=explicit_padding(mod.padding, in_shape[:2], ks, strides),
    )
  if kind.startswith("Binary"):
    rec.update(binary=True, scale=bool(mod.scale), binary_inputs=bool(mod.binary_inputs))
  elif kind != "BatchNorm":
    rec.update(binary=False, scale=False, binary_inputs=False)
  else:
    rec.update(epsilon=float(mod.epsilon))
  return rec


def describe_model(model, image_shape) -> dict:
  """Architecture description of a Flax model from ``arsp_jax`` (needs jax/flax): the
  registry name, the model's dataclass fields, the input shape, ``layers`` and ``graph``
  (see the module docstring)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from arsp_jax import models

  layers: list[dict] = []

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    kind = type(mod).__name__
    if context.method_name != "__call__" or kind not in _LAYER_TYPES or len(mod.path) != 1:
      return next_fun(*args, **kwargs)
    with jax.named_scope(_SCOPE + mod.path[-1]):
      out = next_fun(*args, **kwargs)
    layers.append(layer_record(mod, args[0].shape[1:], out.shape[1:]))
    return out

  variables = jax.eval_shape(
    lambda: models.init_variables(model, jax.random.PRNGKey(0), tuple(image_shape))
  )

  def apply(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  closed = jax.make_jaxpr(apply)(variables, jnp.zeros((1, *image_shape), jnp.float32))
  try:
    recorded = trace_graph(closed.jaxpr)
  except ExportError as exc:  # sizes still work; the engines refuse it at load, saying why
    recorded = {"error": str(exc)}
  return {
    "model": _registry_name(model),
    "fields": _fields(model),
    "input_shape": list(image_shape),
    "layers": layers,
    "graph": recorded,
  }


def _fields(model) -> dict:
  fields = {}
  for k in getattr(type(model), "__dataclass_fields__", {}):
    if k in ("parent", "name"):
      continue
    v = getattr(model, k)
    if isinstance(v, (bool, int, float, str)) or v is None:
      fields[k] = v
    elif isinstance(v, (tuple, list)):
      fields[k] = json.loads(json.dumps(v))
  return fields


# --------------------------------------------------------------------------- graph


def _layer_of(eqn) -> str | None:
  m = re.search(re.escape(_SCOPE) + r"([^/]+)", str(eqn.source_info.name_stack))
  return m.group(1) if m else None


def _is_var(a) -> bool:
  return not hasattr(a, "val")


def _inner_name(eqn) -> str:
  """The name of a ``jit`` call, or of the one ``jit`` call inside a ``custom_jvp_call``
  (``nn.relu``); '' otherwise."""
  if "name" in eqn.params:
    return str(eqn.params["name"])
  inner = eqn.params.get("call_jaxpr")
  eqns = getattr(getattr(inner, "jaxpr", inner), "eqns", [])
  return str(eqns[0].params.get("name", "")) if len(eqns) == 1 else ""


def trace_graph(jaxpr) -> dict:
  """The ops of a traced model (see the module docstring): ``{"ops": [...], "output": id}``.
  Tensor 0 is the images (the jaxpr's last input); each op has ``in`` (tensor ids or literal
  numbers) and ``out``; ``const`` marks ops that do not depend on the images."""
  image = jaxpr.invars[-1]
  ids, data, inner = {image: 0}, {image}, {}  # inner: var -> the layer op that made it
  ops: list[dict] = []
  layer_ops: dict[str, dict] = {}
  for eqn in jaxpr.eqns:
    layer = _layer_of(eqn)
    ins = [a for a in eqn.invars if _is_var(a) and a in ids]
    for a in ins:  # a layer's output is the var of its scope read outside it
      if a in inner and inner[a]["name"] != layer:
        inner[a]["out"] = ids[a]
    if layer is not None:
      op = layer_ops.get(layer)
      if op is None:
        op = layer_ops[layer] = {"op": "layer", "name": layer, "in": [], "out": None}
        ops.append(op)
      data_ins = [a for a in ins if a in data]
      for a in data_ins:
        if inner.get(a) is not op and ids[a] not in op["in"]:
          op["in"].append(ids[a])
      for v in eqn.outvars if data_ins else ():
        ids[v] = len(ids)
        data.add(v)
        inner[v] = op
      continue
    if not ins and any(_is_var(a) for a in eqn.invars):
      continue  # arithmetic on the variables alone
    op = glue_op(eqn)
    op["in"] = [ids[a] if _is_var(a) else float(a.val) for a in eqn.invars]
    op["const"] = not any(a in data for a in ins)
    op["out"] = ids[eqn.outvars[0]] = len(ids)
    if not op["const"]:
      data.add(eqn.outvars[0])
    ops.append(op)
  out = jaxpr.outvars[0]
  if out not in data:
    raise ExportError("the model's output is not computed from its input")
  if out in inner:
    inner[out]["out"] = ids[out]
  return {"ops": _renumbered(ops, ids[out])}


def _renumbered(ops: list[dict], output: int) -> list[dict]:
  """Tensor ids 0, 1, 2, ... in op order (the input 0, each op's output the next)."""
  new = {0: 0}
  for op in ops:
    if op["out"] is None:
      raise ExportError(f"layer {op['name']} has no output read by the model")
    op["in"] = [new[i] if isinstance(i, int) else i for i in op["in"]]
    new[op["out"]] = op["out"] = len(new)
  ops.append({"op": "output", "in": [new[output]], "out": None})
  return ops


_WINDOWS = {"reduce_window_max": "window_max", "reduce_window_sum": "window_sum"}


def glue_op(eqn) -> dict:
  """One array op between layers (see :mod:`arsp_jax.export.graph`)."""
  prim = str(eqn.primitive)
  p = eqn.params
  if prim in ("jit", "custom_jvp_call"):
    name = _inner_name(eqn)
    if name in ("clip", "relu"):
      return {"op": name}
  elif prim in ("add", "div", "mul", "sub", "max"):
    return {"op": prim}
  elif prim == "reshape" and p.get("dimensions") is None:
    return {"op": "reshape", "shape": [int(s) for s in p["new_sizes"]]}
  elif prim == "broadcast_in_dim":
    return {
      "op": "broadcast",
      "shape": [int(s) for s in p["shape"]],
      "dims": [int(d) for d in p["broadcast_dimensions"]],
    }
  elif prim == "reduce_sum":
    return {"op": "reduce_sum", "axes": [int(a) for a in p["axes"]]}
  elif prim in _WINDOWS and set(p["base_dilation"]) == {1} and set(p["window_dilation"]) == {1}:
    return {
      "op": _WINDOWS[prim],
      "window": [int(w) for w in p["window_dimensions"]],
      "strides": [int(s) for s in p["window_strides"]],
      "padding": [[int(a), int(b)] for a, b in p["padding"]],
    }
  elif prim == "convert_element_type":
    return {"op": "copy"}
  raise ExportError(f"the packed engines cannot run {prim} {_inner_name(eqn)!r} between layers")


def _registry_name(model) -> str:
  """The model's registry name, or its class name (a user's own model: the engines run its
  graph, they do not need the name)."""
  from arsp_jax import models

  for name, cls in models.MODELS.items():
    if type(model) is cls:
      return name
  return type(model).__name__


def explicit_padding(padding, hw, ks, strides) -> list:
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [[0, 0], [0, 0]]
    if padding.upper() != "SAME":
      raise ExportError(f"unsupported padding {padding!r}")
    return same_padding(hw, ks, strides)
  return [[int(a), int(b)] for a, b in padding]
