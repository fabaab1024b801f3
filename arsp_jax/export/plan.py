"""The compiled engine's plan: the export's graph (:mod:`arsp_jax.export.graph`) as a list of
steps, each a graph op or a small fused group of them, found by the graph's structure alone.

* ``sign_pack``: ``layer -> [2x2 max pool] -> batchnorm -> clip -> [flatten]`` whose result is
  read only by layers that pack their inputs (binary inputs, ungrouped): one step writing the
  next layer's packed input (:class:`arsp_jax.export.compiled.Packed`), with the layer fused
  into it where a kernel exists (a binary conv with the pool, a real conv without);
* ``tail``: ``batchnorm -> clip -> float Dense`` (a classifier after a hidden layer): one numba
  call per row at small batches;
* ``op``: any other op, run as the reference runs it (binary layers by the compiled kernels).

:func:`chain_signature` spells a graph that is one chain of layers as a string, which the
compiled engine matches against the shapes its one-call kernels run (a chain of binary dense
layers; conv, conv + pool, conv + pool, dense, dense).
"""

from __future__ import annotations

from typing import NamedTuple

from arsp_jax.export.graph import Op, consumers


class Step(NamedTuple):
  """One step of the plan. ``kind``: ``op``, ``sign_pack`` or ``tail``; ``ops`` the graph ops
  it covers (in order: run one by one when no fused kernel applies); ``src``/``out`` the
  tensors it reads and writes; for ``sign_pack``: ``layer`` (the producing layer), ``pool``,
  ``bn``, ``flatten``; for ``tail``: ``bn`` and ``layer`` (the Dense)."""

  kind: str
  ops: tuple
  src: int
  out: int
  layer: str | None = None
  bn: str | None = None
  pool: bool = False
  flatten: bool = False


def _single_reader(ops, readers, t):
  r = readers.get(t, [])
  return (r[0], ops[r[0]]) if len(r) == 1 else (None, None)


def is_sign_clip(op: Op) -> bool:
  """A ``clip(x, lo, hi)`` with ``lo < 0 < hi``: its sign is the sign of ``x``."""
  return op.kind == "clip" and len(op.ins) == 3 and op.ins[1] < 0 < op.ins[2]


def _sign_pack(ops, readers, k, spec, packs) -> tuple[Step, set] | None:
  producer = ops[k]
  covered, t = [k], producer.out
  j, op = _single_reader(ops, readers, t)
  pool = op is not None and op.kind == "window_max" and op.params["window"] == [1, 2, 2, 1]
  pool = pool and op.params["strides"] == [1, 2, 2, 1] and not any(map(any, op.params["padding"]))
  if pool:
    covered.append(j)
    j, op = _single_reader(ops, readers, op.out)
  if op is None or op.kind != "layer" or spec[op.name]["type"] != "BatchNorm":
    return None
  bn = op.name
  covered.append(j)
  j, op = _single_reader(ops, readers, op.out)
  if op is None or not is_sign_clip(op):
    return None
  covered.append(j)
  out = op.out
  j, nxt = _single_reader(ops, readers, out)
  flatten = nxt is not None and nxt.kind == "reshape" and len(nxt.params["shape"]) == 2
  if flatten:
    covered.append(j)
    out = nxt.out
  final = [ops[r] for r in readers.get(out, [])]
  if not final or not all(r.kind == "layer" and packs(r.name) for r in final):
    return None
  if flatten and any(spec[r.name]["type"] != "BinaryDense" for r in final):
    return None
  step = Step("sign_pack", tuple(ops[i] for i in covered), producer.ins[0], out)
  return step._replace(layer=producer.name, bn=bn, pool=pool, flatten=flatten), set(covered)


def _tail(ops, readers, k, spec) -> tuple[Step, set] | None:
  bn = ops[k]
  j, act = _single_reader(ops, readers, bn.out)
  if act is None or not (act.kind == "clip" and act.ins[1:] == (-1.0, 1.0)):
    return None
  i, dense = _single_reader(ops, readers, act.out)
  if dense is None or dense.kind != "layer" or spec[dense.name]["type"] != "Dense":
    return None
  step = Step("tail", (bn, act, dense), bn.ins[0], dense.out, layer=dense.name, bn=bn.name)
  return step, {k, j, i}


def build_steps(ops: list[Op], spec: dict, packs) -> list[Step]:
  """The plan of a graph; ``packs(name)``: whether layer ``name`` runs on packed inputs."""
  readers = consumers(ops)
  steps, done = [], set()
  for k, op in enumerate(ops):
    if k in done or op.params.get("const") or op.kind == "output":
      continue
    fused = None
    if op.kind == "layer" and spec[op.name]["type"] != "BatchNorm":
      fused = _sign_pack(ops, readers, k, spec, packs)
    elif op.kind == "layer":
      fused = _tail(ops, readers, k, spec)
    if fused is not None and not (fused[1] & done):
      steps.append(fused[0])
      done |= fused[1]
      continue
    steps.append(Step("op", (op,), op.ins[0] if op.ins else -1, op.out))
  return steps


_TOKENS = {"Conv": "C", "BinaryConv": "c", "Dense": "D", "BinaryDense": "d", "BatchNorm": "B"}


def chain_signature(ops: list[Op], spec: dict) -> tuple[str, list[str]] | None:
  """(tokens, layer names) of a graph that is one chain (each op reads the previous op's
  output, once): ``C``/``c`` real/binary conv, ``D``/``d`` real/binary dense, ``B``
  batchnorm, ``A`` clip to [-1, 1], ``P`` 2x2 max pool, ``R`` flatten; None otherwise."""
  readers = consumers(ops)
  tokens, names, prev = [], [], 0
  for op in ops:
    if op.kind == "output":
      break
    if op.params.get("const") or not op.ins or op.ins[0] != prev or len(readers.get(prev, [])) != 1:
      return None
    if op.kind == "layer":
      if spec[op.name].get("groups", 1) > 1:
        return None
      tokens.append(_TOKENS[spec[op.name]["type"]])
      names.append(op.name)
    elif op.kind == "clip" and op.ins[1:] == (-1.0, 1.0):
      tokens.append("A")
    elif op.kind == "window_max" and op.params["window"] == op.params["strides"] == [1, 2, 2, 1]:
      tokens.append("P" if not any(map(any, op.params["padding"])) else "?")
    elif op.kind == "reshape" and len(op.params["shape"]) == 2:
      tokens.append("R")
    else:
      return None
    prev = op.out
  return "".join(tokens), names
