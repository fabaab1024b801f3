"""CPU inference latency: float32 runtimes vs the packed engines, dense and sparse formats.

For the MLP (784-1024-1024-10) and cnn_small (28x28x1), both in BNN mode (sign activations:
hidden binary layers get +-1 inputs and run as XNOR-popcount; the first layer has real inputs),
it times, at batch 1 and 64, with 1 and 2 threads (one child process per thread count):

  float32_jax        the float32 model under jax.jit: effective +-1 weights, XNOR scales and
                     folded batchnorm precomputed from the export (what one would deploy)
  float32_onnxruntime the same float32 graph exported to ONNX, run by onnxruntime
  flax_apply         the Flax model itself under jax.jit (recomputes mask * sign(w) per call)
  numpy_dense        the numpy reference engine (arsp_jax.export.packed), dense export
  compiled_dense     the compiled engine (arsp_jax.export.compiled, numba), dense export
  compiled_dense_float_input  the same on inputs that are not standardised 8-bit pixels
                     (random normal floats: the MLP's fc1 takes the subset-sum tables)
  compiled_word_S    word format (fixed fan-in 64-bit words per output) at sparsity S
  compiled_sparse_S  unstructured masks at sparsity S (gathered words + mask AND)
  compiled_channel50 50% of every binary layer's output channels

Inputs are what the trained models see: random 8-bit images standardised with Fashion-MNIST's
training statistics (stored in the export, as eval.py does), the same float32 array for every
runtime.  Whole-model latency is what a user sees (``logits`` of a batch); per-layer latency is each
engine's own layer time inside one forward pass (``profile``) and, for float32, the layer
alone as a jitted JAX matmul/convolution.  Weights and masks are random (latency does not
depend on them).  Every variant is timed in one process, interleaved in rounds of a few calls,
so the ratios share the machine's load.  CPU model, instruction-set flags and load average
are recorded with the figures.

vgg_small and resnet18 (CIFAR-10 sized, 32x32x3, BNN mode; ``GRAPH_MODELS``) get whole-model
rows only: the compiled engine (its plan built from the export's graph) dense and word 0.95
against float32 jax and onnxruntime (``bench/float_graph.py``: the float graphs are built from
the export's graph too), with checks that the compiled logits equal the numpy reference's and
that the predictions are the Flax model's.

  python bench/inference.py --out bench/results/inference.json
  python bench/inference.py --models vgg_small resnet18 --threads 1 \
    --out bench/results/inference_graph_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from float_graph import float_ops, jax_forward, onnx_model  # noqa: E402

MODELS = {
  "mlp": dict(kwargs=dict(hidden=(1024, 1024)), shape=(28, 28, 1)),
  "cnn_small": dict(kwargs=dict(), shape=(28, 28, 1)),
}
# CIFAR-10-sized models, their compiled engine run from the export's graph (generic plan):
# whole-model rows only (bench_graph_model), dense and word-0.95 exports
GRAPH_MODELS = {
  "vgg_small": dict(kwargs=dict(), shape=(32, 32, 3)),
  "resnet18": dict(kwargs=dict(), shape=(32, 32, 3)),
}
CIFAR_STANDARDISATION = {"mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7]}
BNN = dict(binary_activations=True)
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
STANDARDISATION = {"mean": [72.94], "std": [90.02]}  # Fashion-MNIST training set (0..255)
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "popcnt")


def cpu_info() -> dict:
  model, flags = platform.processor() or "unknown", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return {"model": model, "flags": {k: k in flags for k in FLAGS}, "cpu_count": os.cpu_count()}


# --------------------------------------------------------------------------- models and masks


def word_mask(rng, shape, sparsity):
  """Fixed fan-in: every output keeps round((1 - s) * n) of its n 64-bit words (>= 1)."""
  i, o = shape[-2], shape[-1]
  taps, iw = int(np.prod(shape[:-2])), -(-i // 64)
  n = taps * iw
  f = max(1, int(round((1 - sparsity) * n)))
  keep = np.zeros((n, o), bool)
  for c in range(o):
    keep[rng.permutation(n)[:f], c] = True
  return np.repeat(keep.reshape(taps, iw, o), 64, axis=1)[:, :i].reshape(shape)


def mask_for(kind: str, rng, shape):
  if kind == "dense":
    return np.ones(shape, np.float32)
  if kind == "channel50":
    keep = np.zeros(shape[-1], bool)
    keep[rng.permutation(shape[-1])[: shape[-1] // 2]] = True
    return np.broadcast_to(keep, shape).astype(np.float32).copy()
  family, s = kind.rsplit("_", 1)
  if family == "word":
    return word_mask(rng, shape, float(s)).astype(np.float32)
  return (rng.random(shape) >= float(s)).astype(np.float32)


def variables_for(model, shape, kind: str, seed: int = 0):
  import jax

  from arsp_jax import models

  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(seed), shape))
  rng = np.random.default_rng(seed)

  def fill(tree, col, last=None):
    if isinstance(tree, dict):
      return {k: fill(x, col, k) for k, x in tree.items()}
    s = tree.shape
    if col == "masks":
      return mask_for(kind, rng, s)
    if col == "batch_stats":
      return (rng.uniform(0.5, 2.0, s) if last == "var" else rng.normal(0, 0.5, s)).astype(
        np.float32
      )
    if last == "kernel":
      return rng.uniform(-1, 1, s).astype(np.float32)
    if last == "scale":
      return rng.uniform(0.5, 1.5, s).astype(np.float32)
    return rng.normal(0, 0.1, s).astype(np.float32)

  return {c: fill(v[c], c) for c in v}


# --------------------------------------------------------------------------- timing


def interleaved(fns: dict, rounds: int, per_round: int) -> dict:
  """Median/p90 ms per call of each fn, timed in rounds that visit every fn in turn."""
  times = {k: [] for k in fns}
  for fn in fns.values():  # warm-up (compiles)
    fn()
    fn()
  for _ in range(rounds):
    for k, fn in fns.items():
      for _ in range(per_round):
        t = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t)
  out = {}
  for k, ts in times.items():
    ms = 1e3 * np.asarray(ts)
    out[k] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}
    out[k]["calls"] = len(ts)
  return out


def layer_profiles(engines: dict, x, rounds: int, per_round: int = 1) -> dict:
  """Median seconds per layer (ms) of each engine's forward pass (``profile``)."""
  acc = {k: {} for k in engines}
  for eng in engines.values():
    eng.profile(x)
  for _ in range(rounds):
    for k, eng in engines.items():
      for _ in range(per_round):
        for name, sec in eng.profile(x)[1].items():
          acc[k].setdefault(name, []).append(1e3 * sec)
  return {k: {n: float(np.median(v)) for n, v in d.items()} for k, d in acc.items()}


def float_layer_times(engine, binary, b, rounds):
  import jax

  from arsp_jax.export import compress

  rng = np.random.default_rng(2)
  fns = {}
  for l in binary:
    shape = (b, *l["in_shape"])
    xin = np.where(rng.random(shape) < 0.5, 1.0, -1.0).astype(np.float32)
    p = engine.binary[l["name"]]
    w = compress.matrix_kernel(p["eff"].astype(np.float32), p["shape"])
    if l["type"] == "BinaryDense":
      f = jax.jit(lambda x, w: x @ w)
    else:
      pad, st = [tuple(q) for q in l["padding"]], tuple(l["strides"])
      f = jax.jit(
        lambda x, w, pad=pad, st=st: jax.lax.conv_general_dilated(
          x, w, st, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
      )
    xj, wj = jax.device_put(xin), jax.device_put(w)
    fns[l["name"]] = lambda f=f, xj=xj, wj=wj: f(xj, wj).block_until_ready()
  res = interleaved(fns, rounds, 3)
  return {k: v["median_ms"] for k, v in res.items()}


# --------------------------------------------------------------------------- one model


def build(name: str, tmpdir: str, kinds) -> tuple:
  from arsp_jax import models
  from arsp_jax.export import compress, engine

  spec = {**MODELS, **GRAPH_MODELS}[name]
  model = models.get_model(name, 10, **spec["kwargs"], **BNN)
  arch = compress.describe_model(model, spec["shape"])
  engines, sparsity, flax_vars = {}, {}, None
  for kind in kinds:
    v = variables_for(model, spec["shape"], kind)
    path = os.path.join(tmpdir, f"{name}_{kind}.arsp")
    std = STANDARDISATION if name in MODELS else CIFAR_STANDARDISATION
    extra = {"standardisation": std}
    header = compress.export(path, v["params"], v["masks"], v["batch_stats"], arch, extra)
    sizes = header["sizes"]["layers"]
    sparsity[kind] = {n: 1 - l["kept"] / l["connections"] for n, l in sizes.items()}
    engines[f"compiled_{kind}"] = engine.load(path, "compiled", dtype=np.float32)
    if kind == "dense":
      engines["numpy_dense"] = engine.load(path, "numpy", dtype=np.float32)
      flax_vars = v
  return model, arch, engines, sparsity, flax_vars


def bench_model(name: str, batches, rounds: int, tmpdir: str) -> dict:
  import jax
  import onnxruntime as ort

  kinds = ["dense", "channel50"] + [f"word_{s}" for s in SPARSITIES]
  kinds += ["sparse_0.9", "sparse_0.95"]
  model, arch, engines, sparsity, v = build(name, tmpdir, kinds)
  plan = float_ops(engines["numpy_dense"])
  jf = jax_forward(plan)
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
  opts.inter_op_num_threads = 1
  sess = ort.InferenceSession(
    onnx_model(plan, MODELS[name]["shape"]), opts, providers=["CPUExecutionProvider"]
  )
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  binary = [l for l in arch["layers"] if l.get("binary")]
  out = {"sparsity_achieved": sparsity, "binary_layers": {}, "batches": {}}
  for l in binary:
    out["binary_layers"][l["name"]] = {"type": l["type"], "binary_inputs": l["binary_inputs"]}
  rng = np.random.default_rng(1)
  for b in batches:
    raw = rng.integers(0, 256, (b, *MODELS[name]["shape"])).astype(np.uint8)
    x = engines["compiled_dense"].preprocess(raw)
    xf = rng.normal(size=x.shape).astype(np.float32)
    ref = np.asarray(apply(v, x))
    xj = jax.device_put(x)
    fns = {
      "float32_jax": lambda: jf(xj).block_until_ready(),
      "float32_onnxruntime": lambda: sess.run(None, {"x": x}),
      "flax_apply": lambda: apply(v, xj).block_until_ready(),
    }
    for k, eng in engines.items():
      fns[k] = lambda eng=eng: eng.logits(x, batch_size=b)
    dense = engines["compiled_dense"]
    fns["compiled_dense_float_input"] = lambda: dense.logits(xf, batch_size=b)
    agree = {
      "float32_jax": bool((np.asarray(jf(xj)).argmax(-1) == ref.argmax(-1)).all()),
      "float32_onnxruntime": bool((sess.run(None, {"x": x})[0].argmax(-1) == ref.argmax(-1)).all()),
      "compiled_dense": bool((engines["compiled_dense"].predict(x) == ref.argmax(-1)).all()),
    }
    per_round = 10 if b == 1 else 1
    whole = interleaved(fns, rounds, per_round)
    layers = layer_profiles(engines, x, max(3, rounds // 2), per_round)
    layers["compiled_dense_float_input"] = layer_profiles(
      {"f": dense}, xf, max(3, rounds // 2), per_round
    )["f"]
    layers["float32_jax"] = float_layer_times(
      engines["numpy_dense"], binary, b, max(3, rounds // 2)
    )
    out["batches"][str(b)] = {"whole_model": whole, "layers": layers, "same_predictions": agree}
    report_batch(name, b, whole, layers, binary)
  return out


def bench_graph_model(name: str, batches, rounds: int, tmpdir: str) -> dict:
  """Whole-model latency of a CIFAR-sized model: the compiled engine (its plan from the
  export's graph) dense and word 0.95 against the float32 runtimes; checks that the compiled
  logits equal the numpy reference's (bit for bit, and the largest difference) and that the
  predictions are the Flax model's."""
  import jax
  import onnxruntime as ort

  model, arch, engines, sparsity, v = build(name, tmpdir, ["dense", "word_0.95"])
  ref_engine = engines.pop("numpy_dense")
  plan = float_ops(ref_engine)
  jf = jax_forward(plan)
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
  opts.inter_op_num_threads = 1
  shape = GRAPH_MODELS[name]["shape"]
  sess = ort.InferenceSession(onnx_model(plan, shape), opts, providers=["CPUExecutionProvider"])
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out = {"sparsity_achieved": sparsity, "steps": {}, "batches": {}}
  for k, eng in engines.items():
    out["steps"][k] = [s.kind + (f":{s.layer}" if s.layer else "") for s in eng.steps]
  rng = np.random.default_rng(1)
  for b in batches:
    x = engines["compiled_dense"].preprocess(rng.integers(0, 256, (b, *shape)).astype(np.uint8))
    want = np.asarray(apply(v, x)).argmax(-1)
    got, ref = engines["compiled_dense"].logits(x, batch_size=b), ref_engine.logits(x)
    checks = {
      "compiled_dense_equals_numpy_reference": bool(np.array_equal(got, ref)),
      "compiled_dense_max_abs_diff_vs_numpy": float(np.abs(got - ref).max()),
      "compiled_dense_same_predictions_as_flax": bool((got.argmax(-1) == want).all()),
      "float32_onnxruntime_same_predictions_as_flax": bool(
        (sess.run(None, {"x": x})[0].argmax(-1) == want).all()
      ),
    }
    xj = jax.device_put(x)
    fns = {
      "float32_jax": lambda: jf(xj).block_until_ready(),
      "float32_onnxruntime": lambda: sess.run(None, {"x": x}),
    }
    for k, eng in engines.items():
      fns[k] = lambda eng=eng: eng.logits(x, batch_size=b)
    whole = interleaved(fns, rounds if b == 1 else max(2, rounds // 4), 5 if b == 1 else 1)
    out["batches"][str(b)] = {"whole_model": whole, "checks": checks}
    print(f"{name} batch {b}: " + ", ".join(f"{k} {r['median_ms']:.3f}" for k, r in whole.items()))
    print(f"  {checks}", flush=True)
  return out


def report_batch(name, b, whole, layers, binary):
  print(f"{name} batch {b} (median ms):", flush=True)
  for k, r in whole.items():
    per = " ".join(
      f"{l['name']}={layers[k][l['name']]:.3f}" for l in binary if l["name"] in layers.get(k, {})
    )
    print(f"  {k:<22} {r['median_ms']:9.3f}  {per}", flush=True)


# --------------------------------------------------------------------------- goals


def summarise(res: dict) -> dict:
  """The issue's goals, from one child's (one thread count's) measurements."""
  out = {}
  for m, r in res.items():
    pop = [n for n, l in r["binary_layers"].items() if l["binary_inputs"]]
    for b, rb in r["batches"].items():
      w, lay = rb["whole_model"], rb["layers"]
      best_float = min(w["float32_jax"]["median_ms"], w["float32_onnxruntime"]["median_ms"])
      dense = w["compiled_dense"]["median_ms"]
      s = {
        "compiled_dense_vs_best_float32_whole_model": best_float / dense,
        "compiled_dense_float_input_vs_best_float32_whole_model": best_float
        / w["compiled_dense_float_input"]["median_ms"],
        "compiled_dense_vs_float32_whole_model": {
          k: w[k]["median_ms"] / dense for k in ("float32_jax", "float32_onnxruntime")
        },
        "compiled_dense_vs_numpy_whole_model": w["numpy_dense"]["median_ms"] / dense,
        "popcount_layers": pop,
        "compiled_dense_vs_float32_jax_popcount_layers": sum(lay["float32_jax"][n] for n in pop)
        / sum(lay["compiled_dense"][n] for n in pop),
      }
      words = [f"compiled_word_{x}" for x in SPARSITIES]
      s["word_binary_layers_ms"] = {
        k: sum(lay[k][n] for n in r["binary_layers"]) for k in ["compiled_dense"] + words
      }
      s["word_popcount_layers_ms"] = {
        k: sum(lay[k][n] for n in pop) for k in ["compiled_dense"] + words
      }
      wb = s["word_popcount_layers_ms"]
      s["word_0.95_vs_dense_popcount_layers"] = wb["compiled_dense"] / wb["compiled_word_0.95"]
      seq = [wb[k] for k in words]
      s["word_latency_falls_with_density"] = bool(all(a >= c for a, c in zip(seq, seq[1:])))
      out[f"{m}_batch{b}"] = s
  return out


# --------------------------------------------------------------------------- numba vs XLA


def xla_vs_numba(batches, rounds: int) -> dict:
  """The popcount kernel choice: the MLP's fc2 (1024 -> 1024, 16 words of 64 bits) as the
  numba kernel vs ``jax.lax.population_count`` under ``jax.jit`` (the same bits as 32 uint32
  words: JAX without x64 has no uint64; same exact integers)."""
  import jax
  import jax.numpy as jnp

  from arsp_jax.export import kernels

  @jax.jit
  def xla(xw, w, k):
    pc = jax.lax.population_count(xw[:, None, :] ^ w[None]).astype(jnp.int32).sum(-1)
    return (k - 2 * pc).astype(jnp.float32)

  rng = np.random.default_rng(0)
  w = rng.integers(0, 2**63, (1024, 16), dtype=np.uint64)
  wt, idx, k = np.ascontiguousarray(w.T), np.zeros((16, 1024), np.int64), np.full(1024, 1024)
  out = {}
  for b in batches:
    xw = rng.integers(0, 2**63, (b, 16), dtype=np.uint64)
    y = np.empty((b, 1024))
    args = (xw, wt, wt, idx, k, np.ones(1024), np.arange(1024), np.zeros(1024), y)
    xj, wj = jax.device_put(xw.view(np.uint32)), jax.device_put(w.view(np.uint32))
    kj = jax.device_put(k.astype(np.int32))
    fns = {
      "numba": lambda args=args, b=b: kernels.bdense_range(*args, (False, False, False), 0, b),
      "xla": lambda xj=xj: xla(xj, wj, kj).block_until_ready(),
    }
    fns["numba"]()
    assert np.array_equal(np.asarray(xla(xj, wj, kj)), y)
    out[str(b)] = {k: v["median_ms"] for k, v in interleaved(fns, rounds, 20).items()}
  return out


# --------------------------------------------------------------------------- fc1 kernels


def fc1_kernels(rounds: int) -> dict:
  """The MLP's real-input fc1 (784 -> 1024, +-1 weights) at batch 1 inside numba (no
  dispatch), per call: the engine's bit planes on 8-bit pixels and subset-sum tables on
  floats (``dense_chain.first_layer``, including its batchnorm + sign + packing), and an int16 dot
  product over the +-1 matrix (LLVM emits ``vpmaddwd``), the alternative not taken."""
  import tempfile

  from numba import njit

  from arsp_jax.export import dense_chain

  @njit
  def layer_loop(x, bufs, n):
    for _ in range(n):
      dense_chain.first_layer(x, bufs)

  @njit
  def dot16_loop(u, w, acc, n):
    for _ in range(n):
      for o in range(w.shape[0]):
        s = np.int32(0)
        row = w[o]
        for i in range(u.shape[0]):
          s += np.int32(u[i]) * np.int32(row[i])
        acc[o] = s

  with tempfile.TemporaryDirectory() as tmp:
    _, _, engines, _, _ = build("mlp", tmp, ["dense"])
  eng = engines["compiled_dense"]
  bufs = eng.dense_chain["buffers"]
  rng = np.random.default_rng(4)
  raw = rng.integers(0, 256, (1, *MODELS["mlp"]["shape"])).astype(np.uint8)
  xp = eng.preprocess(raw).reshape(-1)
  xf = rng.normal(size=xp.shape).astype(np.float32)
  w16 = np.where(eng.binary["fc1"]["eff"] > 0, 1, -1).astype(np.int16)
  u16, acc = raw.reshape(-1).astype(np.int16), np.zeros(w16.shape[0], np.int32)
  reps = 20
  fns = {
    "bit_planes_pixels": lambda: layer_loop(xp, bufs, reps),
    "subset_sum_tables_floats": lambda: layer_loop(xf, bufs, reps),
    "int16_dot_product": lambda: dot16_loop(u16, w16, acc, reps),
  }
  return {k: v["median_ms"] / reps for k, v in interleaved(fns, rounds, 5).items()}


# --------------------------------------------------------------------------- README


def _fmt(ms: float) -> str:
  return f"{ms:.3f}" if ms < 1 else (f"{ms:.2f}" if ms < 10 else f"{ms:.1f}")


def readme_block(report: dict) -> str:
  """docs/deployment.md's latency tables and goal lines, from a report of :func:`main`."""
  run = report["runs_by_threads"]["1"]
  cpu = report["cpu"]
  flags = ", ".join(k for k, v in cpu["flags"].items() if v and k != "popcnt")
  lb, la = report["load_average_before"][0], report["load_average_after"][0]
  cols = [
    ("float32 JAX", "float32_jax"),
    ("float32 ORT", "float32_onnxruntime"),
    ("numpy ref", "numpy_dense"),
    ("compiled dense", "compiled_dense"),
    ("dense, float input", "compiled_dense_float_input"),
    ("channel 50%", "compiled_channel50"),
    *[(f"word {s}", f"compiled_word_{s}") for s in SPARSITIES],
    ("sparse 0.9", "compiled_sparse_0.9"),
    ("sparse 0.95", "compiled_sparse_0.95"),
  ]
  out = [
    f"Measured {report['time'][:10]} on **{cpu['model']} ({cpu['cpu_count']} vCPUs; {flags})**,"
    f" load average {lb:.1f} before and {la:.1f} after the run (other jobs share the CPUs),"
    " so single figures are noisy; ratios come from one run. Whole model, ms, median,"
    " **1 thread**:",
    "",
    "| model, batch | " + " | ".join(c for c, _ in cols) + " |",
    "| --- |" + " --- |" * len(cols),
  ]
  res = run["results"]
  for m, r in res.items():
    for b, rb in r["batches"].items():
      w = rb["whole_model"]
      cells = [_fmt(w[k]["median_ms"]) if k in w else "-" for _, k in cols]
      cells[3] = f"**{cells[3]}**"
      out.append(f"| {m}, {b} | " + " | ".join(cells) + " |")
  out += [
    "",
    "Per layer, the binary-input (popcount) layers only, each with its fused epilogue"
    " (compiled MLP: time-stamp counter inside the fused pass; cnn_small: per-layer calls,"
    " conv2/conv3 including their fused max pool + batchnorm + sign; float32 = the layer"
    " alone under `jax.jit`), **us**, 1 thread:",
    "",
    "| model, batch (layers) | float32 JAX | compiled dense | "
    + " | ".join(f"word {s}" for s in SPARSITIES)
    + " |",
    "| --- |" + " --- |" * (2 + len(SPARSITIES)),
  ]
  summ = run["summary"]
  for m, r in res.items():
    for b, rb in r["batches"].items():
      s = summ[f"{m}_batch{b}"]
      pop = s["popcount_layers"]
      lay = rb["layers"]
      cells = [sum(lay["float32_jax"][n] for n in pop), *s["word_popcount_layers_ms"].values()]
      out.append(
        f"| {m}, {b} ({'+'.join(pop)}) | " + " | ".join(f"{1e3 * c:.1f}" for c in cells) + " |"
      )
  fc1 = run.get("fc1_batch1_kernels_ms")
  if fc1:
    out += [
      "",
      "The MLP's real-input fc1 (784 -> 1024) at batch 1, per call inside numba: bit planes on"
      f" 8-bit pixels {1e3 * fc1['bit_planes_pixels']:.1f} us, subset-sum tables on floats"
      f" {1e3 * fc1['subset_sum_tables_floats']:.1f} us, an int16 dot product over the +-1"
      f" matrix {1e3 * fc1['int16_dot_product']:.1f} us.",
    ]

  xla = run.get("fc2_popcount_numba_vs_xla_ms") or {}
  if xla:
    out += [
      "",
      "numba vs XLA on fc2 (1024 -> 1024 popcount kernel alone): "
      + ", ".join(
        f"batch {b}: {1e3 * v['numba']:.1f} vs {1e3 * v['xla']:.1f} us" for b, v in xla.items()
      )
      + ".",
    ]

  def met(ok):
    return "met" if ok else "missed"

  mlp1, cnn1 = summ.get("mlp_batch1"), summ.get("cnn_small_batch1")
  mlp64, cnn64 = summ.get("mlp_batch64"), summ.get("cnn_small_batch64")
  out += ["", "Goals (1 thread, this machine):", ""]
  if mlp1:
    w = res["mlp"]["batches"]["1"]["whole_model"]
    best = min(("float32_jax", "float32_onnxruntime"), key=lambda k: w[k]["median_ms"])
    r = mlp1["compiled_dense_vs_best_float32_whole_model"]
    out.append(
      f"* compiled dense >= 10x the faster float32 runtime, MLP batch 1, whole model:"
      f" **{met(r >= 10)} ({r:.1f}x**: {_fmt(w['compiled_dense']['median_ms'])} vs"
      f" {_fmt(w[best]['median_ms'])} ms, {best.split('_', 1)[1]}); on inputs that are not"
      f" 8-bit pixels {mlp1['compiled_dense_float_input_vs_best_float32_whole_model']:.1f}x."
    )
  if cnn1:
    r = cnn1["compiled_dense_vs_best_float32_whole_model"]
    out.append(f"* compiled dense >= 3x on cnn_small at batch 1: **{met(r >= 3)} ({r:.2f}x)**.")
  if mlp64 and cnn64:
    a = mlp64["compiled_dense_vs_best_float32_whole_model"]
    c = cnn64["compiled_dense_vs_best_float32_whole_model"]
    out.append(
      f"* faster than float32 at batch 64: **{met(a > 1 and c > 1)}** (MLP {a:.2f}x,"
      f" cnn_small {c:.2f}x)."
    )
  if mlp1 and cnn1:
    a, c = mlp1["word_0.95_vs_dense_popcount_layers"], cnn1["word_0.95_vs_dense_popcount_layers"]
    extra = ""
    if mlp64 and cnn64:
      extra = (
        f"; batch 64: {mlp64['word_0.95_vs_dense_popcount_layers']:.2f}x /"
        f" {cnn64['word_0.95_vs_dense_popcount_layers']:.2f}x"
      )
    reached = res.get("cnn_small", {}).get("sparsity_achieved", {}).get("word_0.95", {})
    reached = ", ".join(f"{k} {v:.3f}" for k, v in reached.items())
    out.append(
      f"* word 0.95 >= 3x dense on the popcount layers at batch 1: MLP **{met(a >= 3)}**"
      f" ({a:.2f}x), cnn_small **{met(c >= 3)}** ({c:.2f}x"
      + (f"; its word masks at 0.95 reach {reached}" if reached else "")
      + f"){extra}; latency falls with density at batch 1:"
      f" MLP {'yes' if mlp1['word_latency_falls_with_density'] else 'no'}, cnn_small"
      f" {'yes' if cnn1['word_latency_falls_with_density'] else 'no'}."
    )
  return "\n".join(out)


def write_readme(report_path: str, readme: str = str(ROOT / "docs" / "deployment.md")) -> None:
  from arsp_jax.study.mainjob import replace_block

  report = json.loads(Path(report_path).read_text())
  text = Path(readme).read_text()
  Path(readme).write_text(replace_block(text, "inference-bench", readme_block(report)))


# --------------------------------------------------------------------------- driver


def child(args) -> dict:
  import tempfile

  import jax

  with tempfile.TemporaryDirectory() as tmp:
    results = {
      m: bench_model(m, args.batches, args.rounds, tmp) for m in args.models if m in MODELS
    }
    graph_rows = {
      m: bench_graph_model(m, args.batches, args.rounds, tmp)
      for m in args.models
      if m in GRAPH_MODELS
    }
  import numba

  return {
    "threads": args.threads,
    "numba_threads": numba.get_num_threads(),
    "numba_threading_layer": numba.threading_layer(),
    "jax": jax.__version__,
    "results": results,
    "graph_models": graph_rows,
    "summary": summarise(results),
    "fc2_popcount_numba_vs_xla_ms": xla_vs_numba(args.batches, args.rounds) if results else None,
    "fc1_batch1_kernels_ms": fc1_kernels(args.rounds) if "mlp" in args.models else None,
  }


def child_env(threads: int) -> dict:
  env = dict(os.environ, BENCH_THREADS=str(threads), JAX_PLATFORMS="cpu")
  env["NUMBA_NUM_THREADS"] = str(threads)
  env["OPENBLAS_NUM_THREADS"] = str(threads)
  env["OMP_NUM_THREADS"] = str(threads)
  if threads == 1:
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  return env


def main(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  choices = [*MODELS, *GRAPH_MODELS]
  ap.add_argument("--models", nargs="+", default=choices, choices=choices)
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
  ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
  ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per batch")
  ap.add_argument("--out", default="bench/results/inference.json")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument(
    "--readme",
    action="store_true",
    help="only rewrite the latency block of docs/deployment.md from --out",
  )
  args = ap.parse_args(argv)
  if args.readme:
    write_readme(args.out)
    return
  if args.child:
    args.threads = args.threads[0]
    sys.stdout.write("@@JSON@@" + json.dumps(child(args)) + "\n")
    return
  runs = {}
  load_before = os.getloadavg()
  for t in args.threads:
    cmd = [sys.executable, __file__, "--child", "--threads", str(t), "--rounds", str(args.rounds)]
    cmd += ["--models", *args.models, "--batches", *map(str, args.batches)]
    print(f"== {t} thread(s)", flush=True)
    proc = subprocess.run(cmd, env=child_env(t), capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
      sys.exit(proc.stderr[-4000:])
    text, _, payload = proc.stdout.partition("@@JSON@@")
    print(text, end="")
    runs[str(t)] = json.loads(payload)
  report = {
    "benchmark": "inference",
    "settings": vars(args),
    "cpu": cpu_info(),
    "python": platform.python_version(),
    "numpy": np.__version__,
    "load_average_before": load_before,
    "load_average_after": os.getloadavg(),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "statistic": "median ms of single calls, variants interleaved in rounds, after warm-up",
    "runs_by_threads": runs,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1) + "\n")
  print(json.dumps({t: r["summary"] for t, r in runs.items()}, indent=1))
  for t, r in runs.items():
    for m, g in r.get("graph_models", {}).items():
      for b, rb in g["batches"].items():
        w = rb["whole_model"]
        ratio = w["float32_onnxruntime"]["median_ms"] / w["compiled_dense"]["median_ms"]
        print(f"{t} thread(s) {m} batch {b}: compiled dense {ratio:.2f}x onnxruntime", rb["checks"])
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
