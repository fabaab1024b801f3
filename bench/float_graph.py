"""The float32 baselines of ``bench/inference.py`` built from an export's graph (no per-model
code): the model as float32 ops with the effective +-1 weights, XNOR scales and folded
batchnorm precomputed (what one would deploy), run under ``jax.jit`` or exported to ONNX.

A ``clip`` whose readers all binarise their inputs becomes a ``sign`` (the deployed BNN's
activation); any other binary-input layer gets a ``sign`` on its input.
"""

from __future__ import annotations

import numpy as np


def float_ops(engine) -> list[dict]:
  """The graph of a loaded export (``engine``: a packed engine) as float32 ops over tensor ids."""
  from arsp_jax.export import compress, graph

  spec, ops = engine.spec, engine.ops
  readers = graph.consumers(ops)
  out, signed = [], set()
  for name, arr in engine.consts.items():
    out.append({"kind": "const", "ins": [], "out": name, "value": np.float32(arr)})
  for op in ops:
    if op.kind == "output":
      out.append({"kind": "output", "ins": [op.ins[0]], "out": None})
      break
    if op.params.get("const"):
      continue
    if op.kind == "layer":
      out.extend(_layer_ops(engine, spec[op.name], op, signed, compress))
      continue
    if op.kind == "clip":
      rd = [ops[k] for k in readers.get(op.out, [])]
      if rd and all(r.kind == "layer" and spec[r.name].get("binary_inputs") for r in rd):
        out.append({"kind": "sign", "ins": [op.ins[0]], "out": op.out})
        signed.add(op.out)
        continue
    if op.kind == "reshape" and len(op.params["shape"]) != 2:
      raise NotImplementedError("only flattening reshapes in the float baselines")
    if op.kind == "broadcast":
      raise NotImplementedError("broadcasts in the float baselines")
    out.append({"kind": op.kind, "ins": list(op.ins), "out": op.out, **op.params})
  return out


def _layer_ops(engine, l, op, signed, compress) -> list[dict]:
  src, res = op.ins[0], []
  if l.get("binary_inputs") and src not in signed:
    res.append({"kind": "sign", "ins": [src], "out": f"s{src}"})
    src = f"s{src}"
  if l["type"] == "BatchNorm":
    mult, add = engine.bn[op.name]
    return res + [{"kind": "bn", "ins": [src], "out": op.out, "mult": mult, "add": add}]
  if l.get("binary"):
    p = engine.binary[op.name]
    eff = p["eff"].astype(np.float32)  # [O_s, R]: pruned channels back as zero rows
    if p["channels"] is not None and not p["compact"]:
      eff = np.zeros((p["O"], eff.shape[1]), np.float32)
      eff[p["channels"]] = p["eff"]
    w = compress.matrix_kernel(eff, [*p["shape"][:-1], eff.shape[0]])
    scale = p["scale"] if p["compact"] else engine.full_scale(p)
    scale = np.ones(w.shape[-1], np.float32) if scale is None else scale
    bias = np.zeros(w.shape[-1], np.float32) if p["bias"] is None else p["bias"]
    w = (w * scale).astype(np.float32)
  else:
    w = engine.real[op.name]["kernel"].astype(np.float32)
    bias = engine.real[op.name].get("bias", np.zeros(w.shape[-1])).astype(np.float32)
  kind = "conv" if l["type"].endswith("Conv") else "dense"
  res.append({"kind": kind, "ins": [src], "out": op.out, "w": w, "b": np.float32(bias)})
  if kind == "conv":
    res[-1].update(padding=l["padding"], strides=l["strides"], groups=l["groups"])
  return res


def jax_forward(fops):
  """The float ops under ``jax.jit`` (NHWC)."""
  import jax
  import jax.numpy as jnp

  def window(x, op, init, fn):
    pads = [tuple(p) for p in op["padding"]]
    return jax.lax.reduce_window(x, init, fn, tuple(op["window"]), tuple(op["strides"]), pads)

  unary = {
    "sign": lambda x, op: jnp.where(x >= 0, 1.0, -1.0).astype(jnp.float32),
    "clip": lambda x, op: jnp.clip(x, op["ins"][1], op["ins"][2]),
    "relu": lambda x, op: jnp.maximum(x, 0.0),
    "bn": lambda x, op: x * op["mult"] + op["add"],
    "dense": lambda x, op: x @ op["w"] + op["b"],
    "reshape": lambda x, op: x.reshape(x.shape[0], -1),
    "reduce_sum": lambda x, op: x.sum(axis=tuple(op["axes"])),
    "window_max": lambda x, op: window(x, op, -jnp.inf, jax.lax.max),
    "window_sum": lambda x, op: window(x, op, 0.0, jax.lax.add),
    "copy": lambda x, op: x,
    "conv": lambda x, op: (
      jax.lax.conv_general_dilated(
        x,
        op["w"],
        tuple(op["strides"]),
        [tuple(p) for p in op["padding"]],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=op["groups"],
      )
      + op["b"]
    ),
  }
  binary = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide}

  def f(x):
    env = {0: x}
    for op in fops:
      val = [env[t] if not isinstance(t, float) else t for t in op["ins"][:2]]
      if op["kind"] == "output":
        return val[0]
      if op["kind"] == "const":
        env[op["out"]] = jnp.asarray(op["value"])
      elif op["kind"] in binary:
        env[op["out"]] = binary[op["kind"]](val[0], val[1])
      else:
        env[op["out"]] = unary[op["kind"]](val[0], op)

  return jax.jit(f)


_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def onnx_model(fops, input_shape) -> bytes:
  """The float ops as an ONNX graph: 4-D tensors NCHW inside (the input, NHWC like the other
  runtimes', transposed once), back to NHWC before a flatten."""
  from onnx import TensorProto, helper, numpy_helper

  nodes, inits = [], []

  def const(arr, dtype=np.float32):
    name = f"c{len(inits)}"
    inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype), name))
    return name

  def node(op, inputs, out, **attrs):
    nodes.append(helper.make_node(op, inputs, [out], **attrs))
    return out

  rank = {0: 4}
  node("Transpose", ["x"], "t0", perm=[0, 3, 1, 2])
  for op in fops:
    k, out = op["kind"], f"t{op['out']}"
    ins = [f"t{t}" for t in op["ins"][:2] if not isinstance(t, float)]
    if k in ("add", "sub", "mul", "div"):  # a literal operand as a scalar constant
      ins = [f"t{t}" if not isinstance(t, float) else const(np.float32(t)) for t in op["ins"]]
    r = rank.get(op["ins"][0], 0) if op["ins"] else 0
    rank[op["out"]] = r
    if k == "output":
      final = ins[0]
      break
    _onnx_op(op, k, ins, out, r, rank, node, const)
  graph = helper.make_graph(
    nodes,
    "float32_bnn",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *input_shape])],
    [helper.make_tensor_value_info(final, TensorProto.FLOAT, None)],
    inits,
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  return model.SerializeToString()


def _onnx_op(op, k, ins, out, r, rank, node, const):
  chan = (1, -1, 1, 1) if r == 4 else (1, -1)
  if k == "const":
    v = op["value"]
    rank[op["out"]] = v.ndim
    node("Identity", [const(v.transpose(0, 3, 1, 2) if v.ndim == 4 else v)], out)
  elif k == "sign":
    ge = node("GreaterOrEqual", [ins[0], const(np.zeros(()))], out + "_ge")
    node("Where", [ge, const(np.ones(())), const(-np.ones(()))], out)
  elif k == "clip":
    node("Clip", [ins[0], const(np.float32(op["ins"][1])), const(np.float32(op["ins"][2]))], out)
  elif k == "relu":
    node("Relu", ins[:1], out)
  elif k == "copy":
    node("Identity", ins[:1], out)
  elif k == "bn":
    m = node("Mul", [ins[0], const(op["mult"].reshape(chan))], out + "_m")
    node("Add", [m, const(op["add"].reshape(chan))], out)
  elif k == "dense":
    node("Add", [node("MatMul", [ins[0], const(op["w"])], out + "_mm"), const(op["b"])], out)
  elif k == "conv":
    (pt, pb), (pl, pr) = op["padding"]
    w = const(np.transpose(op["w"], (3, 2, 0, 1)))
    attrs = dict(pads=[pt, pl, pb, pr], strides=list(op["strides"]), group=op["groups"])
    node("Conv", [ins[0], w, const(op["b"])], out, **attrs)
  elif k in ("window_max", "window_sum"):
    (pt, pb), (pl, pr) = op["padding"][1:3]
    attrs = dict(kernel_shape=op["window"][1:3], strides=op["strides"][1:3], pads=[pt, pl, pb, pr])
    if k == "window_max":
      node("MaxPool", ins[:1], out, **attrs)
    else:
      avg = node("AveragePool", ins[:1], out + "_avg", count_include_pad=1, **attrs)
      node("Mul", [avg, const(np.float32(op["window"][1] * op["window"][2]))], out)
  elif k == "reshape":
    nhwc = node("Transpose", ins[:1], out + "_nhwc", perm=[0, 2, 3, 1]) if r == 4 else ins[0]
    node("Flatten", [nhwc], out, axis=1)
    rank[op["out"]] = 2
  elif k == "reduce_sum":
    axes = [_NCHW_AXIS[a] if r == 4 else a for a in op["axes"]]
    node("ReduceSum", [ins[0], const(np.asarray(axes), np.int64)], out, keepdims=0)
    rank[op["out"]] = r - len(axes)
  elif k in ("add", "sub", "mul", "div"):
    node(k.capitalize(), ins, out)
    rank[op["out"]] = max(rank.get(t, 0) for t in op["ins"][:2] if not isinstance(t, float))
  else:
    raise NotImplementedError(k)
