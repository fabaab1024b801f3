"""A study's ``report.md`` (and the step that writes every study file)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from arsp_jax import fileio
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.study import grid, plots, stats
from arsp_jax.study.grid import REFERENCE


def fmt_num(x: float | None, digits: int = 2) -> str:
  """``x`` with ``digits`` decimals; an en dash when missing or NaN."""
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
  """A p-value with two significant digits; ``<1e-4`` below that; a dash when missing."""
  if p is None or math.isnan(p):
    return "–"
  return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def fmt_p_eq(p: float | None) -> str:
  """``p = 0.012``, or ``p < 1e-4``."""
  text = fmt_p(p)
  return f"p < {text[1:]}" if text.startswith("<") else f"p = {text}"


def fmt_cell(values: Sequence[float], ci: bool = False) -> str:
  """``mean ± std`` of ``values`` (with ``[95% CI] (n=…)`` when ``ci``); a dash if none."""
  if not len(values):
    return "–"
  s = stats.summarize(values)
  text = f"{s['mean']:.2f} ± {fmt_num(s['std'])}"
  if ci:
    text += f" [{fmt_num(s['ci_low'])}, {fmt_num(s['ci_high'])}] (n={s['n']})"
  return text


def ok_runs(rows: Sequence[dict], label: str, target: float | None = None) -> list[dict]:
  return [
    r
    for r in rows
    if r["method"] == label
    and r["status"] == "done"
    and (target is None or r["target_sparsity"] == target)
  ]


def _header(rows, meta, grp) -> list[str]:
  out = [f"# Study: {meta.get('title', 'comparison')}", ""]
  out += [
    f"- command: `{meta.get('command', '')}`",
    f"- runs finished: {sum(r['status'] == 'done' for r in rows)}, failed: "
    f"{sum(r['status'] == 'failed' for r in rows)}",
    f"- machine: {meta.get('machine', '')}",
    "- accuracies are test accuracies in %; ± is the standard deviation over seeds; "
    "CI is the 95% t interval of the mean; p-values are Welch's t-test (two-sided)",
    "",
  ]
  dense = [100 * r["test_accuracy"] for r in ok_runs(rows, "dense")]
  if dense:
    out.append(f"Dense start (shared by every method of a seed): {_mean_std_n(dense)}.")
  ctrl = grp.get(("control", 0.0), [])
  if ctrl:
    out.append(f"Unpruned control (same phases and epochs, nothing pruned): {_mean_std_n(ctrl)}.")
  return out + [""]


def _mean_std_n(values) -> str:
  s = stats.summarize(values)
  return f"{s['mean']:.2f} ± {fmt_num(s['std'])} (n={s['n']})"


def accuracy_table(grp, labels, targets, ci: bool = True) -> list[str]:
  out = ["| method | " + " | ".join(f"{t:g}" for t in targets) + " |"]
  out.append("| --- | " + " | ".join("---" for _ in targets) + " |")
  for lab in labels:
    if lab != "control":
      cells = [fmt_cell(grp.get((lab, t), []), ci) for t in targets]
      out.append(f"| {lab} | " + " | ".join(cells) + " |")
  return out


def _storage_table(rows, labels, targets) -> list[str]:
  out = [
    "| method | target | achieved sparsity | bits per weight | HyperScore | wall s |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for lab in labels:
    for t in [0.0] if lab == "control" else targets:
      rs = ok_runs(rows, lab, t)
      if not rs:
        continue

      def m(k, rs=rs):
        return float(np.nanmean([float(r.get(k, float("nan"))) for r in rs]))

      out.append(
        f"| {lab} | {t:g} | {m('sparsity'):.4f} | {m('bits_per_weight'):.3f} | "
        f"{m('hyperscore'):.1f} | {m('wall_seconds'):.0f} |"
      )
  return out


def comparisons(grp, labels, targets, reference: str = REFERENCE) -> list[tuple]:
  """(target, other method, Welch result, verdict) of ``reference`` against every other
  method with runs at the same target."""
  out = []
  for t in targets:
    a = grp.get((reference, t))
    if not a:
      continue
    for lab in labels:
      if lab not in (reference, "control") and grp.get((lab, t)):
        w = stats.welch(a, grp[(lab, t)])
        out.append((t, lab, w, stats.verdict(w)))
  return out


def _welch_table(grp, labels, targets, reference) -> list[str]:
  out = [
    f"| target | other method | {reference} mean | other mean | difference (pts) | p | verdict |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  ctrl = grp.get(("control", 0.0), [])
  for t in targets:
    a = grp.get((reference, t))
    if not a:
      continue
    for tt, lab, w, v in comparisons(grp, labels, [t], reference):
      v = f"ARSP {v}" if v in ("wins", "loses") else v
      out.append(
        f"| {tt:g} | {lab} | {np.mean(a):.2f} | {np.mean(grp[(lab, t)]):.2f} | "
        f"{w['diff']:+.2f} | {fmt_p(w['p'])} | {v} |"
      )
    if ctrl:
      w = stats.welch(a, ctrl)
      v = "within 1 pt" if w["diff"] >= -1 else "more than 1 pt below"
      out.append(
        f"| {t:g} | control (unpruned) | {np.mean(a):.2f} | {np.mean(ctrl):.2f} | "
        f"{w['diff']:+.2f} | {fmt_p(w['p'])} | {v} |"
      )
  return out


def _anova_table(grp, labels, targets) -> list[str]:
  out = ["| target | methods | F | p |", "| --- | --- | --- | --- |"]
  for t in targets:
    a = stats.anova(grp, labels, t)
    if a:
      out.append(f"| {t:g} | {a['methods']} | {fmt_num(a['F'])} | {fmt_p(a['p'])} |")
  return out


def layer_order(run: dict, layers: list[str]) -> tuple[int, ...]:
  """The layers of one run ordered by final keep ratio, largest first (ratios rounded to 0.01,
  ties in layer order)."""
  return tuple(sorted(range(len(layers)), key=lambda i: (-round(float(run[layers[i]]), 2), i)))


def keep_ratio_table(rows, labels, targets) -> list[str]:
  """Mean final keep ratio per layer [min, max over seeds] of the methods whose layers end
  at different keep ratios (non-uniform allocations), and whether every run orders the layers
  the same way (a seed-consistency check that does not hinge on the ratios' magnitudes)."""
  layers = sorted({k for r in rows for k in r if k.startswith("keep_")})
  out = []
  for lab in labels:
    for t in targets:
      rs = [r for r in ok_runs(rows, lab, t) if all(c in r for c in layers)]
      if not rs or all(np.ptp([r[c] for c in layers]) < 1e-6 for r in rs):
        continue
      cells = []
      for c in layers:
        v = [float(r[c]) for r in rs]
        cells.append(f"{np.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
      orders = {layer_order(r, layers) for r in rs}
      same = (
        " ≥ ".join(layers[i][5:] for i in next(iter(orders)))
        if len(orders) == 1
        else f"differs ({len(orders)} orders)"
      )
      cells.append(same if len(rs) > 1 else "–")
      out.append(f"| {lab} | {t:g} | {len(rs)} | " + " | ".join(cells) + " |")
  if not out:
    return []
  head = (
    "| method | target | runs | "
    + " | ".join(c[5:] for c in layers)
    + " | layers by keep ratio (to 0.01), the same in every run |"
  )
  return [head, "|" + " --- |" * (4 + len(layers))] + out


def regression_lines(rows, labels, targets) -> list[str]:
  """The within-method keep-ratio regressions, or why there are none."""
  out = []
  for lab in labels:
    for t in targets:
      for g in stats.keep_ratio_regressions(rows, lab, t):
        out.append(
          f"| {lab} | {t:g} | {g['layer']} | {g['runs']} | {g['slope']:+.2f} | "
          f"{g['r']:+.2f} | {fmt_p(g['p'])} |"
        )
  if not out:
    return [
      f"No method has {stats.MIN_REGRESSION_RUNS} or more runs with differing keep ratios at "
      "one target sparsity, so no regression is reported (runs of different methods are not "
      "pooled: across methods the keep ratio is confounded with everything else a method does)."
    ]
  head = "| method | target | layer | runs | slope (pts per unit keep ratio) | r | p |"
  return [head, "| --- | --- | --- | --- | --- | --- | --- |"] + out


def _plain_statement(grp, labels, targets, reference) -> list[str]:
  verdicts = comparisons(grp, labels, targets, reference)
  if not verdicts:
    return ["No comparison available (ARSP or the other methods have no finished runs)."]
  out = []
  for t in targets:
    parts = [
      f"{v} vs {lab} ({w['diff']:+.2f} pts, p={fmt_p(w['p'])})"
      for tt, lab, w, v in verdicts
      if tt == t
    ]
    if parts:
      out.append(f"- sparsity {t:g}: " + "; ".join(parts) + ".")
  return out


def target_check(grp, reference: str = REFERENCE) -> list[str]:
  """ARSP against the best baseline (+1 point, p < 0.05) and the control (within 1 point)."""
  lines = []
  for t in (0.9, 0.95):
    a = grp.get((reference, t))
    best = stats.best_of(grp, methods_lib.BASELINES, t)
    if not a or not best:
      continue
    w = stats.welch(a, best[1])
    ok = w["diff"] >= 1.0 and not math.isnan(w["p"]) and w["p"] < 0.05
    miss = f" by {max(0.0, 1.0 - w['diff']):.2f} pts" + ("" if w["p"] < 0.05 else " and p >= 0.05")
    lines.append(
      f"- {t:g}: {reference} {np.mean(a):.2f} vs best baseline {best[0]} "
      f"{np.mean(best[1]):.2f}: {w['diff']:+.2f} pts (p={fmt_p(w['p'])}) — target "
      f"(>= +1 pt, p < 0.05) {'MET' if ok else 'MISSED' + miss}."
    )
  a, ctrl = grp.get((reference, 0.9)), grp.get(("control", 0.0))
  if a and ctrl:
    d = float(np.mean(a) - np.mean(ctrl))
    lines.append(
      f"- 0.9 vs the unpruned control: {d:+.2f} pts — target (within 1 pt) "
      f"{'MET' if d >= -1.0 else f'MISSED by {-1.0 - d:.2f} pts'}."
    )
  return lines


def build_report(rows: list[dict], meta: dict, reference: str = REFERENCE) -> str:
  """The text of ``report.md`` from the study's rows (``grid.collect`` or ``grid.read_csv``)."""
  grp = stats.groups(rows)
  ts = stats.targets(grp)
  labels = stats.method_labels(rows)
  out = _header(rows, meta, grp)
  out += ["## Accuracy by method and target sparsity", ""]
  out += accuracy_table(grp, labels, ts) + [""]
  out += ["## Achieved sparsity and storage (mean over seeds)", ""]
  out += _storage_table(rows, labels, ts) + [""]
  out += [f"## {reference} against every other method (Welch's t-test)", ""]
  out += _welch_table(grp, labels, ts, reference) + [""]
  out += ["## One-way ANOVA across methods (per target sparsity)", ""]
  out += _anova_table(grp, labels, ts) + [""]
  out += ["## Final keep ratios per layer (mean [min, max] over seeds)", ""]
  out += keep_ratio_table(rows, labels, ts) or ["Every method kept every layer uniformly."]
  out += ["", "## Keep-ratio regression within one method", ""]
  out += [
    "`scipy.stats.linregress` of test accuracy (%) on a layer's final keep ratio over the "
    "runs of one method at one target sparsity. A slope is an association within that "
    "method's runs, not a cause.",
    "",
  ]
  out += regression_lines(rows, labels, ts) + [""]
  out += ["## Where ARSP wins, ties or loses", ""]
  out += _plain_statement(grp, labels, ts, reference) + [""]
  lines = target_check(grp, reference)
  if lines:
    out += ["## The issue's target", ""] + lines + [""]
  return "\n".join(out)


def write_study_files(
  workdir: str,
  specs: Sequence[grid.RunSpec],
  meta: dict,
  log: Callable[[str], None] = print,
) -> list[dict]:
  """Collects the finished runs and writes runs.csv, report.md, pareto.png, keep_ratios.png."""
  rows = grid.collect(workdir, specs)
  grid.write_csv(rows, os.path.join(workdir, "runs.csv"))
  fileio.write_text_atomic(os.path.join(workdir, "report.md"), build_report(rows, meta))
  plots.plot_pareto(rows, os.path.join(workdir, "pareto.png"))
  plots.plot_keep_ratios(rows, os.path.join(workdir, "keep_ratios.png"))
  log(
    f"wrote {workdir}/runs.csv, report.md, pareto.png, keep_ratios.png "
    f"({sum(r['status'] == 'done' for r in rows)} finished runs)"
  )
  return rows


def read_study(path: str) -> dict:
  """A study directory: its rows (``runs.csv``) and the header of its ``report.md``."""
  rows = grid.read_csv(os.path.join(path, "runs.csv"))
  meta = {"title": os.path.basename(path), "command": "", "machine": ""}
  rpath = os.path.join(path, "report.md")
  if os.path.exists(rpath):
    with open(rpath) as f:
      for line in f:
        if m := re.match(r"# Study: (.*)", line):
          meta["title"] = m.group(1).strip()
        elif m := re.match(r"- command: `(.*)`", line):
          meta["command"] = m.group(1).strip()
        elif m := re.match(r"- machine: (.*)", line):
          meta["machine"] = m.group(1).strip()
  grp = stats.groups(rows)
  return {"dir": os.path.basename(path), "rows": rows, "meta": meta, "groups": grp}
