"""The headroom: how much the per-layer allocation alone can change accuracy on a model.

A headroom study is a directory under ``results/`` whose name starts with ``headroom`` and
that holds a ``runs.csv`` in the harness's format (``method``, ``target_sparsity``, ``seed``,
``status``, ``test_accuracy``; a ``report.md`` header gives its title, e.g.
``# Study: fashion_mnist / mlp``, which ties it to the study of the same title). Its runs are
read as:

* *allocations*: one per distinct value of the ``allocation`` column when runs.csv has one,
  else one per method label that is not a rule — e.g. ``gmp@arsp.keep_ratios=…`` or a
  ``random_alloc@…`` variant; ARSP and its ablations (``arsp*``) are ignored;
* *rules*: the labels in the registry's ``BASELINES`` (ERK, LAMP, … once registered).

Per target sparsity it reports the allocations' mean accuracies over seeds (best, median,
worst, spread) and the headroom = best allocation − best rule (the best rule of the same
study, else of the main study with the same title). Tolerant by design: missing columns,
failed runs or an empty file give no section, not an error.
"""

from __future__ import annotations

import os

import numpy as np

from arsp_jax.pruning import methods as methods_lib
from arsp_jax.study import report, stats
from arsp_jax.study.grid import REFERENCE
from arsp_jax.study.report import fmt_p_eq

SKIP = ("dense", "control")


def _allocation_groups(rows: list[dict]) -> dict[tuple[str, float], list[float]]:
  use_col = any("allocation" in r for r in rows)
  out: dict[tuple, list[float]] = {}
  for r in rows:
    if r.get("status") != "done" or "test_accuracy" not in r or r.get("method") in SKIP:
      continue
    label = r["method"]
    if label in methods_lib.BASELINES or label.startswith("arsp"):
      continue
    key = str(r["allocation"]) if use_col and "allocation" in r else label
    out.setdefault((key, r["target_sparsity"]), []).append(100 * r["test_accuracy"])
  return out


def _keep_columns(rows: list[dict], label: str, target: float) -> dict[str, float]:
  """{layer: mean final keep ratio} (``keep_*`` columns) of one allocation's finished runs."""
  sel = [
    r
    for r in rows
    if r.get("method") == label and r.get("target_sparsity") == target and r.get("status") == "done"
  ]
  # runs.csv's column order is the layer order (a sort would put keep_fc10 before keep_fc2)
  cols = list(
    dict.fromkeys(k for r in sel for k in r if k.startswith("keep_") and r[k] not in ("", None))
  )
  return {
    c[len("keep_") :]: float(np.mean([float(r[c]) for r in sel if r.get(c) not in ("", None)]))
    for c in cols
  }


def _keep_ratios(rows: list[dict], label: str, target: float) -> list[float]:
  """Mean final keep ratio per layer, in layer order."""
  return list(_keep_columns(rows, label, target).values())


def _sweep(rows: list[dict], here: dict[str, float], target: float) -> list[dict]:
  """The random allocations as a controlled sweep: per layer, Spearman's rank correlation (and
  its two-sided p) between the allocation's keep ratio for that layer and its mean accuracy."""
  from scipy import stats as sstats

  keeps = {label: _keep_columns(rows, label, target) for label in here}
  layers = [c for c in next(iter(keeps.values()), {}) if all(c in k for k in keeps.values())]
  out = []
  for layer in layers:
    x = [keeps[label][layer] for label in here]
    if len(set(x)) < 3:
      continue
    rho, p = sstats.spearmanr(x, [here[label] for label in here])
    out.append({"layer": layer, "rho": float(rho), "p": float(p)})
  return out


#: Allocations a target needs before its headroom (best allocation - best rule) is reported.
MIN_ALLOCATIONS = 10


def measure(
  rows: list[dict], other_groups: list[dict], reference: str = REFERENCE
) -> dict[float, dict]:
  """{target: {allocations, best, median, worst, spread, rule, rule_mean, headroom,
  best_label, best_keep, reference_mean, reference_above}} (``reference``: ARSP's mean in the
  study of the same title, and how many allocations it is above)."""
  allocs = _allocation_groups(rows)
  own = stats.groups(rows)
  out = {}
  for t in sorted({t for (_, t) in allocs}):
    here = {k: np.mean(v) for (k, tt), v in allocs.items() if tt == t}
    means = sorted(here.values())
    best_label = max(here, key=here.get)
    best_rule = stats.best_of(own, methods_lib.BASELINES, t)
    ref = None
    for g in other_groups:
      best_rule = best_rule or stats.best_of(g, methods_lib.BASELINES, t)
      ref = ref or g.get((reference, t))
    m = {
      "allocations": len(means),
      "runs": sum(len(v) for (k, tt), v in allocs.items() if tt == t),
      "best": float(means[-1]),
      "median": float(np.median(means)),
      "worst": float(means[0]),
      "spread": float(means[-1] - means[0]),
      "rule": None,
      "rule_mean": None,
      "headroom": None,
      "best_label": best_label,
      "best_keep": _keep_ratios(rows, best_label, t),
      "sweep": _sweep(rows, here, t) if len(means) >= MIN_ALLOCATIONS else [],
      "reference_mean": None if not ref else float(np.mean(ref)),
      "reference_above": None if not ref else int(sum(x < np.mean(ref) for x in means)),
    }
    if best_rule:
      m.update(rule=best_rule[0], rule_mean=float(np.mean(best_rule[1])))
      if len(means) >= MIN_ALLOCATIONS:  # a best of a few draws is not the headroom
        m["headroom"] = m["best"] - m["rule_mean"]
    out[t] = m
  return out


def section(
  name: str, title: str, measured: dict[float, dict], reference: str = REFERENCE
) -> list[str]:
  out = [
    f"### Headroom: {title} (`results/{name}/`)",
    "",
    "| target | allocations (runs) | best | median | worst | spread | best rule | headroom "
    f"| {reference} | {reference} above |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for t, m in measured.items():
    rule = "–" if m["rule"] is None else f"{m['rule']} {m['rule_mean']:.2f}"
    room = "–" if m["headroom"] is None else f"{m['headroom']:+.2f}"
    if m["headroom"] is None and m["allocations"] < MIN_ALLOCATIONS:
      room = f"– (< {MIN_ALLOCATIONS} allocations)"
    ref = "–" if m["reference_mean"] is None else f"{m['reference_mean']:.2f}"
    above = "–" if m["reference_above"] is None else f"{m['reference_above']} of {m['allocations']}"
    out.append(
      f"| {t:g} | {m['allocations']} ({m['runs']}) | {m['best']:.2f} | {m['median']:.2f} | "
      f"{m['worst']:.2f} | {m['spread']:.2f} | {rule} | {room} | {ref} | {above} |"
    )
  out.append("")
  for t, m in measured.items():
    keep = ", ".join(f"{x:.3f}" for x in m["best_keep"])
    ratios = f", final keep ratios ({keep})" if keep else ""
    out.append(f"- Best allocation at {t:g}: `{m['best_label']}`{ratios}.")
  for t, m in measured.items():
    if m.get("sweep"):
      cells = "; ".join(f"{c['layer']} {c['rho']:+.2f} ({fmt_p_eq(c['p'])})" for c in m["sweep"])
      out.append(
        f"- The {m['allocations']} allocations at {t:g} as a controlled sweep (only the keep "
        f"ratios differ; they share one budget, so raising one layer's ratio lowers the others'): "
        f"Spearman's rank correlation of each layer's keep ratio with the accuracy: {cells} "
        "(uncorrected for the number of layers)."
      )
  return out + [""]


def read_all(results_dir: str, studies: list[dict]) -> tuple[dict, list[str]]:
  """({(title, target): measurement}, RESULTS.md lines) over every headroom study."""
  room: dict = {}
  lines: list[str] = []
  for name in sorted(os.listdir(results_dir)):
    path = os.path.join(results_dir, name)
    if not name.startswith("headroom") or not os.path.exists(os.path.join(path, "runs.csv")):
      continue
    h = report.read_study(path)
    title = h["meta"]["title"]
    same = [s for s in studies if s["meta"]["title"] == title]
    reference = same[0].get("reference", REFERENCE) if same else REFERENCE
    measured = measure(h["rows"], [s["groups"] for s in same], reference)
    if not measured:
      continue
    for t, m in measured.items():
      room[(title, t)] = m
    lines += section(name, title, measured, reference)
  if lines:
    head = [
      "## Headroom: what the allocation alone can change",
      "",
      "Accuracy (%, mean over seeds) of allocations that differ only in per-layer keep ratios; "
      "headroom = best allocation − best rule (a maximum over many noisy means, biased upwards; the protocol studies add a cross-validated estimate with a CI).",
      "",
    ]
    lines = head + lines
  return room, lines
