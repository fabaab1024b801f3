"""The exported model's graph (``header["arch"]["graph"]``, recorded by
:func:`arsp_jax.export.describe.describe_model`) and the numpy functions of its array ops.

The graph is a list of ops over numbered tensors: tensor 0 is the images ``[B, H, W, C]``,
each op reads ``in`` (tensor ids, or literal numbers) and writes tensor ``out``; the last op,
``output``, names the logits.  Ops:

``layer``       a Dense/Conv/BatchNorm layer of the layer table (by ``name``);
``clip``        ``clip(x, lo, hi)`` (the hard-tanh of BNN mode), ``relu``;
``add``/``sub``/``mul``/``div``/``max``  elementwise, numpy broadcasting;
``reshape``     to ``shape`` (its first entry, the batch, taken from the input);
``broadcast``   ``jax.lax.broadcast_in_dim`` (``shape``, ``dims``; of a literal: a fill);
``reduce_sum``  over ``axes``;
``window_max``/``window_sum``  ``reduce_window`` over ``window``/``strides``/``padding``
                (max pooling; average pooling is a window sum divided by the count);
``copy``        a dtype conversion.

Ops marked ``const`` do not depend on the images; the engines evaluate them once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from arsp_jax import registry as registry_lib
from arsp_jax.errors import ExportError
from arsp_jax.export import arrays
from arsp_jax.registry import Registry


class Op(NamedTuple):
  """One op of the graph: ``kind`` (``op``), the tensors or literals it reads, the tensor it
  writes, the layer ``name`` (layers only) and the op's other fields."""

  kind: str
  ins: tuple
  out: int | None
  name: str | None
  params: dict


def ops_of(arch: dict) -> list[Op]:
  """The graph's ops; an export without a graph (made before the engines read it) raises."""
  graph = arch.get("graph")
  if not graph:
    raise ExportError("this export records no graph (older version): export the model again")
  if "error" in graph:
    raise ExportError(f"the model's graph could not be recorded: {graph['error']}")
  out = []
  for d in graph["ops"]:
    params = {k: v for k, v in d.items() if k not in ("op", "in", "out", "name")}
    out.append(Op(d["op"], tuple(d["in"]), d["out"], d.get("name"), params))
  for op in out:
    if op.kind not in ELEMENTWISE and op.kind not in UNARY and op.kind not in ("layer", "output"):
      raise ExportError(f"the packed engines cannot run op {op.kind!r}")
  return out


def consumers(ops: list[Op]) -> dict[int, list[int]]:
  """Per tensor, the indices of the ops that read it."""
  out: dict[int, list[int]] = {}
  for k, op in enumerate(ops):
    for t in op.ins:
      if isinstance(t, int) and not isinstance(t, bool):
        out.setdefault(t, []).append(k)
  return out


def last_use(ops: list[Op]) -> dict[int, int]:
  """Per tensor, the index of the last op that reads it."""
  return {t: max(ks) for t, ks in consumers(ops).items()}


# --------------------------------------------------------------------------- array ops


def _window(x, window, strides, padding, fill, reduce):
  if window[0] != 1 or window[3] != 1 or strides[0] != 1 or strides[3] != 1:
    raise ExportError("windows over the batch or channel axes are not supported")
  xp = arrays.pad(x, padding[1:3], fill)
  return reduce(arrays.windows(xp, window[1], window[2], strides[1], strides[2]), axis=(3, 4))


def window_max(x, window, strides, padding):
  return _window(x, window, strides, padding, -np.inf, np.max)


def window_sum(x, window, strides, padding):
  return _window(x, window, strides, padding, 0.0, np.sum)


def reshape(x, shape, const=False):
  """To ``shape``, the batch from ``x``; a flatten (``[B, -1]``) keeps whatever channels the
  export stores (channel pruning stores the kept ones only)."""
  if const:
    return x.reshape(shape)
  return x.reshape(x.shape[0], -1) if len(shape) == 2 else x.reshape(x.shape[0], *shape[1:])


def broadcast(x, shape, dims, const=False):
  """``lax.broadcast_in_dim``: ``x``'s axis ``i`` becomes axis ``dims[i]`` of ``shape``."""
  x = np.asarray(x, np.float64)
  shape = list(shape)
  if not const:
    shape[0] = x.shape[0]
  expanded = x.reshape([x.shape[dims.index(a)] if a in dims else 1 for a in range(len(shape))])
  return np.broadcast_to(expanded, shape)


# The array ops between layers, in the package's one registry style (``arsp_jax/registry.py``).
ELEMENTWISE: Registry = registry_lib.of(
  "elementwise op",
  {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum},
)
UNARY: Registry = registry_lib.of(
  "array op",
  {
    "clip": None,  # its bounds are the op's literal inputs
    "relu": lambda x: np.maximum(x, 0.0),
    "copy": lambda x: x,
    "reshape": reshape,
    "broadcast": broadcast,
    "reduce_sum": lambda x, axes: x.sum(axis=tuple(axes)),
    "window_max": window_max,
    "window_sum": window_sum,
  },
)


def value(t, env: dict):
  """A tensor's array from ``env``, or a literal as a float64 scalar."""
  return env[t] if isinstance(t, int) and not isinstance(t, bool) else np.float64(t)


def run_array_op(op: Op, env: dict):
  """The numpy result of a non-layer op (float64 like the reference engine's layers)."""
  args = [value(t, env) for t in op.ins]
  if op.kind in ELEMENTWISE:
    return ELEMENTWISE[op.kind](args[0], args[1])
  if op.kind == "clip":
    return np.clip(args[0], args[1], args[2])
  params = {k: v for k, v in op.params.items() if k != "const"}
  if op.kind in ("reshape", "broadcast"):
    params["const"] = bool(op.params.get("const"))
  return UNARY[op.kind](args[0], **params)


def constants(ops: list[Op]) -> dict:
  """The tensors of the ``const`` ops (which read literals and each other only)."""
  env: dict = {}
  for op in ops:
    if op.params.get("const"):
      env[op.out] = np.asarray(run_array_op(op, env), np.float64)
  return env
