"""The study's figures (matplotlib's object API: no pyplot state, no display backend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from arsp_jax import fileio
from arsp_jax.study.grid import REFERENCE

_REFERENCE_STYLE = {"marker": "*", "markersize": 12, "linewidth": 2.5}
_OTHER_STYLE = {"marker": "o", "markersize": 5, "linewidth": 1.2}


def save_figure(fig: Figure, path: str) -> None:
  """Writes ``fig`` as a PNG atomically."""
  with fileio.atomic_path(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=110)


def _by_target(rows: Sequence[dict], label: str) -> dict[float, list[dict]]:
  by_t: dict[float, list[dict]] = {}
  for r in rows:
    if r["method"] == label and r["status"] == "done":
      by_t.setdefault(r["target_sparsity"], []).append(r)
  return by_t


def plot_pareto(rows: Sequence[dict], path: str, reference: str = REFERENCE) -> None:
  """Accuracy vs achieved sparsity and vs bits per weight, mean ± std over seeds."""
  fig = Figure(figsize=(12, 4.5))
  axes = fig.subplots(1, 2)
  for lab in [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]:
    by_t = _by_target(rows, lab)
    if not by_t:
      continue
    ts = sorted(by_t)
    acc = [[100 * r["test_accuracy"] for r in by_t[t]] for t in ts]
    y = [np.mean(a) for a in acc]
    if lab == "control":
      for ax in axes:
        ax.axhline(y[0], color="gray", linestyle="--", linewidth=1, label="control (unpruned)")
      continue
    e = [np.std(a, ddof=1) if len(a) > 1 else 0.0 for a in acc]
    style = _REFERENCE_STYLE if lab == reference else _OTHER_STYLE
    for ax, key in zip(axes, ("sparsity", "bits_per_weight")):
      x = [np.mean([float(r[key]) for r in by_t[t]]) for t in ts]
      ax.errorbar(x, y, yerr=e, capsize=3, label=lab, **style)
  axes[0].set_xlabel("achieved sparsity of the binary layers")
  axes[1].set_xlabel("bits per prunable weight (signs + mask)")
  axes[1].invert_xaxis()
  for ax in axes:
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc="lower left")
  fig.suptitle("Accuracy vs sparsity and storage (mean ± std over seeds)")
  fig.tight_layout()
  save_figure(fig, path)


def plot_keep_ratios(rows: Sequence[dict], path: str, reference: str = REFERENCE) -> None:
  """The reference method's per-layer keep ratios over rounds, one panel per target."""
  rs = [r for r in rows if r["method"] == reference and r["status"] == "done" and "_rounds" in r]
  ts = sorted({r["target_sparsity"] for r in rs}) or [None]
  fig = Figure(figsize=(4 * len(ts), 3.6))
  axes = fig.subplots(1, len(ts), squeeze=False)
  for ax, t in zip(axes[0], ts):
    group = [r for r in rs if r["target_sparsity"] == t]
    if not group:
      ax.set_title(f"no {reference} runs")
      continue
    for li, layer in enumerate(group[0]["_layers"]):
      for j, r in enumerate(group):
        ratios = np.asarray(r["_rounds"])[:, li]
        x = np.arange(1, len(ratios) + 1)
        ax.plot(x, ratios, color=f"C{li}", alpha=0.8, label=layer if j == 0 else None)
    ax.set_title(f"target sparsity {t:g} ({len(group)} seeds)")
    ax.set_xlabel("pruning round")
    ax.set_ylabel("keep ratio")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("The agent's per-layer keep ratios over rounds (one line per seed)")
  fig.tight_layout()
  save_figure(fig, path)
