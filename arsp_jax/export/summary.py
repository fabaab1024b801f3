"""Model summaries (sizes in bits, Larq-style), HyperScore and printed tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flax import traverse_util

from arsp_jax.export.bits import binary_entropy


def hyperscore(
  val_accuracy: float,
  sparsity: float,
  beta0: float = 5.0,
  gamma: float = -math.log(2.0),
  kappa: float = 2.0,
) -> float:
  """HyperScore = 100 * [1 + sigmoid(beta * ln V + gamma) ** kappa], beta = beta0 * (1 + sparsity).

  ``V`` in (0, 1] is the validation accuracy (clamped to 1e-6 from below).
  Ranges over [100, 200): higher is better.
  """
  v = max(float(val_accuracy), 1e-6)
  beta = beta0 * (1.0 + float(sparsity))
  z = beta * math.log(v) + gamma
  sig = 1.0 / (1.0 + math.exp(-z))
  return 100.0 * (1.0 + sig**kappa)


def _layer_bits(fp: dict, fm: dict) -> tuple:
  """Per-layer records and the bit totals of :func:`model_summary` (batchnorm excluded)."""
  layers = []
  float_bits = dense_bnn_bits = pruned_bits = 0.0
  total_prunable = kept_prunable = 0
  for path in sorted(fp):
    arr = np.asarray(fp[path])
    n = int(arr.size)
    float_bits += 32 * n
    rec = {"name": path, "shape": list(arr.shape), "connections": n}
    if path in fm:
      kept = int(np.asarray(fm[path]).sum())
      d = kept / n if n else 1.0
      dense_bnn_bits += n
      pruned_bits += kept + (binary_entropy(d) * n if kept < n else 0.0)
      total_prunable += n
      kept_prunable += kept
      layers.append({**rec, "binary": True, "kept": kept, "sparsity": 1.0 - d})
    else:
      dense_bnn_bits += 32 * n
      pruned_bits += 32 * n
      if path.endswith("kernel"):
        layers.append({**rec, "binary": False, "kept": n, "sparsity": 0.0})
  return layers, float_bits, dense_bnn_bits, pruned_bits, total_prunable, kept_prunable


def model_summary(
  params: Any, masks: Any, batch_stats: Any = None, scale_layers=(), arch: dict | None = None
) -> dict:
  """Per-layer connection counts and sizes (bits).

  ``float32_bits``: every parameter and batchnorm statistic at 32 bits.
  ``dense_bnn_bits``: binary kernels (those with a mask) at 1 bit per weight, the rest at 32.
  ``pruned_bnn_bits_bound``: binary kernels at 1 bit per *kept* weight plus the mask at its
  entropy bound ``H(d)`` bits per original weight (a lower bound, not a file size).
  ``encoded_bits``: the real size of the exported model (``arsp_jax.compress``: signs of kept
  weights + encoded mask, or kept channels only, real layers at 32 bits, batchnorm folded to 2
  x 32 bits per channel, XNOR scales of ``scale_layers``), with ``bits_per_weight`` (per
  original parameter), ``binary_bits_per_weight`` (binary kernels alone, per original
  connection) and the compression ratios ``compression_vs_float32`` /
  ``compression_vs_dense_bnn`` of the encoded size. With ``arch`` (``describe_model``) the
  encoded size is the export's exactly: the layer after a channel-pruned one drops the inputs of
  the pruned channels (:mod:`arsp_jax.export.shrink`); without it they are counted.
  """
  from arsp_jax.export import compress, shrink

  fp = traverse_util.flatten_dict(dict(params), sep="/")
  fm = traverse_util.flatten_dict(dict(masks), sep="/") if masks else {}
  fb = traverse_util.flatten_dict(dict(batch_stats), sep="/") if batch_stats else {}
  layers, float_bits, dense_bnn_bits, pruned_bits, total_prunable, kept_prunable = _layer_bits(
    fp, fm
  )
  bn_bits = 32 * sum(int(np.asarray(v).size) for v in fb.values())
  float_bits += bn_bits
  dense_bnn_bits += bn_bits
  pruned_bits += bn_bits
  encoded = None
  if arch is not None:
    encoded = compress.encode_model(params, masks, batch_stats, scale_layers)
    shrink.shrink_inputs(encoded, arch, params, masks, compress.encode_binary)
  enc = compress.size_summary(params, masks, batch_stats, scale_layers, encoded=encoded)
  for l in layers:
    e = enc["layers"].get(l["name"].rsplit("/", 1)[0])
    if e is not None:
      l.update(
        encoding=e["encoding"],
        encoded_bits=e["bits"],
        bits_per_weight=e["bits_per_weight"],
        mask_code=e["mask_method"],
      )
    else:
      l.update(
        encoding="float32", encoded_bits=32 * l["connections"], bits_per_weight=32.0, mask_code=None
      )
  n_params = sum(int(np.asarray(v).size) for v in fp.values())
  encoded = float(enc["encoded_bits"])
  return {
    "layers": layers,
    "prunable_connections": total_prunable,
    "kept_connections": kept_prunable,
    "sparsity": 1.0 - kept_prunable / total_prunable if total_prunable else 0.0,
    "float32_bits": float_bits,
    "dense_bnn_bits": dense_bnn_bits,
    "pruned_bnn_bits_bound": pruned_bits,
    "encoded_bits": encoded,
    "bits_per_weight": encoded / n_params if n_params else 0.0,
    "binary_bits_per_weight": enc["binary_bits_per_weight"],
    "compression_vs_float32": float_bits / encoded if encoded else 1.0,
    "compression_vs_dense_bnn": dense_bnn_bits / encoded if encoded else 1.0,
    "bound_compression_vs_float32": float_bits / pruned_bits if pruned_bits else 1.0,
    "bound_compression_vs_dense_bnn": dense_bnn_bits / pruned_bits if pruned_bits else 1.0,
    "encoding": {k: v for k, v in enc.items() if k != "layers"},
  }


def _kib(bits: float) -> str:
  return f"{bits / 8 / 1024:,.1f} KiB"


def format_summary(summary: dict) -> str:
  rows = [("layer", "shape", "kind", "connections", "kept", "sparsity", "stored as", "bits/weight")]
  for l in summary["layers"]:
    enc = l.get("encoding", "")
    if l.get("mask_code"):
      enc += f" ({l['mask_code']})"
    rows.append(
      (
        l["name"],
        "x".join(map(str, l["shape"])),
        "binary" if l["binary"] else "float32",
        f"{l['connections']:,}",
        f"{l['kept']:,}",
        f"{l['sparsity']:.3f}",
        enc,
        f"{l['bits_per_weight']:.3f}" if "bits_per_weight" in l else "",
      )
    )
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  lines.append("")
  lines.append(
    f"prunable connections {summary['prunable_connections']:,}, kept "
    f"{summary['kept_connections']:,} (sparsity {summary['sparsity']:.4f})"
  )
  lines.append(
    f"size: float32 {_kib(summary['float32_bits'])} | dense BNN "
    f"{_kib(summary['dense_bnn_bits'])} | pruned BNN, entropy bound "
    f"{_kib(summary['pruned_bnn_bits_bound'])}"
  )
  if "encoded_bits" in summary:
    lines.append(
      f"encoded (as exported) {_kib(summary['encoded_bits'])}: "
      f"{summary['bits_per_weight']:.3f} bits per original weight, binary layers "
      f"{summary['binary_bits_per_weight']:.3f} bits per original connection"
    )
  lines.append(
    f"compression: {summary['compression_vs_float32']:.1f}x vs float32, "
    f"{summary['compression_vs_dense_bnn']:.2f}x vs dense BNN"
  )
  return "\n".join(lines)


def format_results(results: dict) -> str:
  """The end-of-run table: dense vs pruned accuracy, sparsity, size, HyperScore."""
  lines = [
    f"== {results['method']} on {results['dataset']} / {results['model']} "
    f"(seed {results['seed']}, {results['devices']} device(s)) =="
  ]
  if results.get("dense_test_accuracy") is not None:
    lines.append(f"dense test accuracy   {100 * results['dense_test_accuracy']:.2f}%")
  lines.append(f"final test accuracy   {100 * results['test_accuracy']:.2f}%")
  lines.append(f"overall sparsity      {results['sparsity']:.4f}")
  for name, s in results["layer_sparsity"].items():
    lines.append(f"  {name:<28} sparsity {s:.4f}")
  if "hyperscore" in results:
    lines.append(f"HyperScore            {results['hyperscore']:.2f}")
  lines.append(f"train time            {results['train_seconds']:.1f} s")
  if "size" in results:
    lines.append(format_summary(results["size"]))
  return "\n".join(lines)
