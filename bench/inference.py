"""CPU inference latency: float32 Flax model (jitted JAX) vs the packed numpy engine.

For the MLP (784-1024-1024-10) and cnn_small (28x28x1), both in BNN mode (sign activations,
so hidden binary layers get +-1 inputs and run as XOR-popcount), it times at batch 1 and 64:

  float32          the Flax model, jax.jit, float32 (the effective +-1 weights as float32)
  packed_dense     the exported dense BNN in arsp_jax.packed (numpy)
  packed_sparse    unstructured pruning, 90% of every binary layer's connections (random mask)
  packed_channel   channel pruning, 50% of every binary layer's output channels

and, per binary layer, the same layer alone as a float32 jitted JAX matmul/convolution vs the
packed engine's layer.  Weights and masks are random (latency does not depend on them).
Statistics are the median and 90th percentile over --repeats calls after --warmup calls; all
variants are measured in one process, interleaved per repeat block, so the ratios share the
machine's load.

  python bench/inference.py --repeats 30 --out bench/results/inference.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# One BLAS thread: on this shared 2-core machine multi-threaded OpenBLAS sgemv was 70x slower
# (8.5 ms vs 0.11 ms for 784x1024) from thread contention.  Set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402
from benchutil import cpu_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
  "mlp": dict(kwargs=dict(hidden=(1024, 1024)), shape=(28, 28, 1)),
  "cnn_small": dict(kwargs=dict(), shape=(28, 28, 1)),
}
BNN = dict(binary_activations=True)


def stats(fn, repeats: int, warmup: int) -> dict:
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  ts = np.asarray(ts) * 1e3
  return {
    "median_ms": float(np.median(ts)),
    "p90_ms": float(np.percentile(ts, 90)),
    "min_ms": float(ts.min()),
    "repeats": repeats,
  }


def variables_for(model, shape, masks: str, seed: int = 0):
  import jax

  from arsp_jax import models

  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(seed), shape))
  rng = np.random.default_rng(seed)

  def fill(tree, col, last=None):
    if isinstance(tree, dict):
      return {k: fill(x, col, k) for k, x in tree.items()}
    s = tree.shape
    if col == "masks":
      if masks == "dense":
        return np.ones(s, np.float32)
      if masks == "channel":
        keep = np.zeros(s[-1], bool)
        keep[rng.permutation(s[-1])[: s[-1] // 2]] = True
        return np.broadcast_to(keep, s).astype(np.float32).copy()
      return (rng.random(s) < 0.1).astype(np.float32)
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


def bench_model(name: str, batches, repeats: int, warmup: int, tmpdir: str) -> dict:
  import jax
  import jax.numpy as jnp

  from arsp_jax import models
  from arsp_jax.export import compress, packed

  spec = MODELS[name]
  shape = spec["shape"]
  model = models.get_model(name, 10, **spec["kwargs"], **BNN)
  arch = compress.describe_model(model, shape)
  layers = {l["name"]: l for l in arch["layers"]}
  engines, variables = {}, {}
  for kind in ("dense", "sparse", "channel"):
    v = variables_for(model, shape, kind)
    path = os.path.join(tmpdir, f"{name}_{kind}.arsp")
    compress.export(path, v["params"], v["masks"], v["batch_stats"], arch)
    engines[kind] = packed.PackedModel.from_file(path, dtype=np.float32)
    variables[kind] = v
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  binary = [l for l in arch["layers"] if l.get("binary")]
  out = {
    "model": name,
    "model_kwargs": {**spec["kwargs"], **BNN},
    "input_shape": list(shape),
    "binary_layers": {
      l["name"]: {
        "type": l["type"],
        "in_shape": l["in_shape"],
        "out_shape": l["out_shape"],
        "binary_inputs": l["binary_inputs"],
      }
      for l in binary
    },
    "batches": {},
  }
  rng = np.random.default_rng(1)
  for b in batches:
    x = rng.normal(size=(b, *shape)).astype(np.float32)
    xv = jax.device_put(x)
    vd = jax.device_put(variables["dense"])
    res = {"whole_model": {}, "layers": {}}
    res["whole_model"]["float32_jax"] = stats(
      lambda: apply(vd, xv).block_until_ready(), repeats, warmup
    )
    for kind, eng in engines.items():
      res["whole_model"][f"packed_{kind}"] = stats(
        lambda: eng.logits(x, batch_size=b), repeats, warmup
      )
    # Per binary layer: the layer alone, float32 jitted JAX vs the packed engine.
    for l in binary:
      lname = l["name"]
      xin = np.where(rng.random((b, *l["in_shape"])) < 0.5, 1.0, -1.0).astype(np.float32)
      if not l["binary_inputs"]:
        xin = rng.normal(size=(b, *l["in_shape"])).astype(np.float32)
      w = engines["dense"].binary[lname]["eff"].astype(np.float32)  # [O, R], +-1
      if l["type"] == "BinaryDense":
        wk = jnp.asarray(w.T)
        f = jax.jit(lambda x, w: x @ w)
      else:
        wk = jnp.asarray(compress.matrix_kernel(w, engines["dense"].binary[lname]["shape"]))
        pad = [tuple(p) for p in l["padding"]]
        strides = tuple(l["strides"])
        f = jax.jit(
          lambda x, w, pad=pad, strides=strides: jax.lax.conv_general_dilated(
            x, w, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
          )
        )
      xj = jax.device_put(xin)
      row = {"float32_jax": stats(lambda: f(xj, wk).block_until_ready(), repeats, warmup)}
      for kind, eng in engines.items():
        row[f"packed_{kind}"] = stats(lambda: eng.layer(lname, xin), repeats, warmup)
      row["popcount"] = bool(l["binary_inputs"])
      res["layers"][lname] = row
    pop = [n for n, r in res["layers"].items() if r["popcount"]]

    def total(key, names):
      return sum(res["layers"][n][key]["median_ms"] for n in names)

    wm = res["whole_model"]
    res["summary"] = {
      "popcount_layers": pop,
      "speedup_packed_dense_vs_float32_popcount_layers": total("float32_jax", pop)
      / total("packed_dense", pop),
      "speedup_channel_vs_packed_dense_popcount_layers": total("packed_dense", pop)
      / total("packed_channel", pop),
      "speedup_channel_vs_packed_dense_all_binary_layers": total("packed_dense", res["layers"])
      / total("packed_channel", res["layers"]),
      "speedup_channel_vs_packed_dense_whole_model": wm["packed_dense"]["median_ms"]
      / wm["packed_channel"]["median_ms"],
      "speedup_packed_dense_vs_float32_whole_model": wm["float32_jax"]["median_ms"]
      / wm["packed_dense"]["median_ms"],
    }
    out["batches"][str(b)] = res
    s = res["summary"]
    print(
      f"{name} batch {b}: whole model float32 {wm['float32_jax']['median_ms']:.3f} ms | "
      f"packed dense {wm['packed_dense']['median_ms']:.3f} | sparse "
      f"{wm['packed_sparse']['median_ms']:.3f} | channel {wm['packed_channel']['median_ms']:.3f}"
    )
    for n, r in res["layers"].items():
      print(
        f"  {n:<6} {'popcount' if r['popcount'] else 'real-in '} float32 "
        f"{r['float32_jax']['median_ms']:.3f} ms | packed dense {r['packed_dense']['median_ms']:.3f}"
        f" | sparse {r['packed_sparse']['median_ms']:.3f} | channel "
        f"{r['packed_channel']['median_ms']:.3f}"
      )
    print(
      f"  popcount layers: packed dense {s['speedup_packed_dense_vs_float32_popcount_layers']:.2f}x"
      f" vs float32; channel-50% {s['speedup_channel_vs_packed_dense_popcount_layers']:.2f}x vs "
      f"packed dense (whole model {s['speedup_channel_vs_packed_dense_whole_model']:.2f}x)",
      flush=True,
    )
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
  ap.add_argument("--repeats", type=int, default=30)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--out", default="bench/results/inference.json")
  args = ap.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import tempfile

  import jax

  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    results = {m: bench_model(m, args.batches, args.repeats, args.warmup, tmp) for m in args.models}
  goals = {}
  for m, r in results.items():
    for b, rb in r["batches"].items():
      s = rb["summary"]
      goals[f"{m}_batch{b}"] = {
        "packed_dense_10x_float32_on_binary_layers": {
          "measured": s["speedup_packed_dense_vs_float32_popcount_layers"],
          "met": s["speedup_packed_dense_vs_float32_popcount_layers"] >= 10.0,
        },
        "channel50_1.6x_packed_dense": {
          "measured_popcount_layers": s["speedup_channel_vs_packed_dense_popcount_layers"],
          "measured_whole_model": s["speedup_channel_vs_packed_dense_whole_model"],
          "met": s["speedup_channel_vs_packed_dense_popcount_layers"] >= 1.6,
        },
      }
  report = {
    "benchmark": "inference",
    "settings": vars(args),
    "variants": {
      "sparse": "random mask, 10% of connections kept per binary layer",
      "channel": "50% of output channels kept per binary layer",
      "activations": "binary (sign) in hidden layers; first/last full precision",
    },
    "statistic": "median / p90 wall ms of single calls after warm-up",
    "engine_dtype_real_layers": "float32",
    "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    "numpy": np.__version__,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "load_average_before": load_before,
    "load_average_after": os.getloadavg(),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "results": results,
    "goals": goals,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(goals, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
