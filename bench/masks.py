"""Times weighted-reservoir mask selection against array size.

For each size n (one flat layer of n uniform random scores, keep ratio 0.1) it times, as the
median of ``--repeats`` runs after a warm-up call that compiles:

  keys            sampling_keys, default counter-hash Gumbel noise
  keys_threefry   sampling_keys(noise="threefry"), i.e. jax.random.gumbel, for comparison
  select_radix    topk_mask(method="radix") on precomputed keys (exact k, traced k)
  select_bisect   topk_mask(method="bisect")
  mask_weight     reservoir_mask, weight granularity (keys + selection + mask)
  mask_channel    reservoir_mask, channel granularity on an [n // 512, 512] kernel, axis -1
  lax_top_k       jax.lax.top_k(keys, k) with a static k (only up to --top_k_max)

and fits a scaling exponent per method (slope of log time against log n, numpy.polyfit).

  python bench/masks.py --sizes 1e5 1e6 1e7 2.5e7 --repeats 5 --out bench/results/masks.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchutil import cpu_model  # noqa: E402

from arsp_jax.pruning import reservoir  # noqa: E402

METHODS = (
  "keys",
  "keys_threefry",
  "select_radix",
  "select_bisect",
  "mask_weight",
  "mask_channel",
  "lax_top_k",
)
CHANNELS = 512


def time_call(fn, args, repeats: int) -> dict:
  """Compile (first call), then ``repeats`` timed calls: wall and process CPU seconds."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  walls, cpus = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return {
    "median_s": statistics.median(walls),
    "min_s": min(walls),
    "max_s": max(walls),
    "cpu_median_s": statistics.median(cpus),
    "first_call_s": first,
  }


def bench_size(n: int, keep: float, repeats: int, top_k_max: int, methods) -> dict:
  rng = jax.random.key(0)
  scores = jax.random.uniform(jax.random.key(1), (n,), jnp.float32)
  keys = jax.jit(reservoir.sampling_keys)(rng, scores)
  k = int(round(keep * n))
  ratio = jnp.float32(keep)
  n_ch = (n // CHANNELS) * CHANNELS
  kernel = scores[:n_ch].reshape(n_ch // CHANNELS, CHANNELS)
  calls = {
    "keys": (jax.jit(reservoir.sampling_keys), (rng, scores)),
    "keys_threefry": (
      jax.jit(functools.partial(reservoir.sampling_keys, noise="threefry")),
      (rng, scores),
    ),
    "select_radix": (
      jax.jit(functools.partial(reservoir.topk_mask, method="radix")),
      (keys, jnp.int32(k)),
    ),
    "select_bisect": (
      jax.jit(functools.partial(reservoir.topk_mask, method="bisect")),
      (keys, jnp.int32(k)),
    ),
    "mask_weight": (jax.jit(reservoir.reservoir_mask), (rng, scores, ratio)),
    "mask_channel": (
      jax.jit(functools.partial(reservoir.reservoir_mask, granularity="channel")),
      (rng, kernel, ratio),
    ),
    "lax_top_k": (jax.jit(lambda x: jax.lax.top_k(x, k)[1]), (keys,)),
  }
  out = {}
  for name in methods:
    if name == "lax_top_k" and n > top_k_max:
      continue
    fn, args = calls[name]
    res = time_call(fn, args, repeats)
    if name.startswith("select") or name == "mask_weight":
      mask = fn(*args)
      assert int(mask.sum()) == k, (name, int(mask.sum()), k)
    if name == "mask_channel":
      res["n"] = n_ch
    out[name] = res
    print(f"  n={n:>11,d} {name:<14} {res['median_s'] * 1e3:9.1f} ms", flush=True)
  return out


def fit_exponents(sizes, results, methods) -> dict:
  exps = {}
  for name in methods:
    pts = [
      (results[str(n)][name].get("n", n), results[str(n)][name]["median_s"])
      for n in sizes
      if name in results[str(n)]
    ]
    if len(pts) >= 2:
      x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
      exps[name] = float(np.polyfit(x, y, 1)[0])
  return exps


def _size_label(n: int) -> str:
  mantissa, exponent = f"{n:.1e}".split("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def print_table(sizes, results, exps, methods) -> None:
  head = f"{'method (ms, median)':<20}" + "".join(f"{_size_label(n):>12}" for n in sizes)
  head += f"{'exponent':>10}"
  print(head)
  print("-" * len(head))
  for name in methods:
    row = f"{name:<20}"
    for n in sizes:
      r = results[str(n)].get(name)
      row += f"{r['median_s'] * 1e3:12.1f}" if r else f"{'-':>12}"
    row += f"{exps[name]:10.2f}" if name in exps else f"{'-':>10}"
    print(row)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7, 2.5e7])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--keep", type=float, default=0.1, help="keep ratio (k = round(keep * n))")
  parser.add_argument("--top_k_max", type=float, default=1e7, help="largest n for lax.top_k")
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  parser.add_argument("--out", default="bench/results/masks.json")
  args = parser.parse_args(argv)

  sizes = [int(s) for s in args.sizes]
  device = jax.devices()[0]
  load_before = os.getloadavg()
  results = {}
  for n in sizes:
    results[str(n)] = bench_size(n, args.keep, args.repeats, int(args.top_k_max), args.methods)
  exps = fit_exponents(sizes, results, args.methods)
  print()
  print_table(sizes, results, exps, args.methods)

  report = {
    "settings": {
      "sizes": sizes,
      "repeats": args.repeats,
      "keep_ratio": args.keep,
      "top_k_max": int(args.top_k_max),
      "channels": CHANNELS,
      "statistic": "median wall seconds of the repeats, after one warm-up (compiling) call",
      "scores": "uniform(0, 1) float32, one flat array",
    },
    "jax_version": jax.__version__,
    "jaxlib_version": getattr(jax.lib, "__version__", None) or jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu": cpu_model(),
    "processor": platform.processor(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "load_average_before": load_before,
    "load_average_after": os.getloadavg(),
    "results": results,
    "scaling_exponents": exps,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
