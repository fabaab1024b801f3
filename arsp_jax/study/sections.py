"""One study's section of RESULTS.md: its headline table, ARSP against the best rule, the
tally of wins/ties/losses, the control, ANOVA, storage, keep ratios and notes on the data.
A *study* is ``report.read_study``'s dict plus ``heading`` and ``about``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from arsp_jax.pruning import methods as methods_lib
from arsp_jax.study import report, stats
from arsp_jax.study.grid import REFERENCE
from arsp_jax.study.report import fmt_num, fmt_p, fmt_p_eq

# The goal the issues set for ARSP against the best rule (points, at p < ALPHA).
GOAL_POINTS = 1.0


def rules(labels: Sequence[str]) -> list[str]:
  """The labels that are allocation rules / baselines (the registry's BASELINES), without
  score or config variants."""
  return [lab for lab in labels if lab in methods_lib.BASELINES]


def complete_targets(study: dict) -> list[float]:
  """The target sparsities at which every method of the study has runs (the headline)."""
  grp, labels = study["groups"], stats.method_labels(study["rows"])
  labels = [lab for lab in labels if lab != "control"]
  ts = stats.targets(grp)
  full = [t for t in ts if all(grp.get((lab, t)) for lab in labels)]
  return full or ts


def rule_targets(study: dict, reference: str = REFERENCE) -> list[float]:
  """The targets at which the reference and every rule of the study have runs (ARSP against
  the best rule is reported there, also where an ablation is still missing)."""
  grp = study["groups"]
  labels = rules(stats.method_labels(study["rows"])) + [reference]
  return [t for t in stats.targets(grp) if all(grp.get((lab, t)) for lab in labels)]


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _dense_and_control(study) -> list[str]:
  rows, grp = study["rows"], study["groups"]
  dense = [100 * r["test_accuracy"] for r in report.ok_runs(rows, "dense")]
  out = []
  if dense:
    out.append(f"Dense start: {report.fmt_cell(dense)} (n={len(dense)}).")
  ctrl = grp.get(("control", 0.0))
  if ctrl:
    out.append(f"Unpruned control: {report.fmt_cell(ctrl)} (n={len(ctrl)}).")
  return [" ".join(out), ""] if out else []


def headline_table(study, ts, reference: str = REFERENCE) -> list[str]:
  """Mean ± std per method at the headline targets, with Δ and Welch p against ``reference``."""
  grp = study["groups"]
  labels = [lab for lab in stats.method_labels(study["rows"]) if lab != "control"]
  head = "| method | " + " | ".join(f"{t:g} | Δ (p) at {t:g}" for t in ts) + " |"
  out = [head, "| --- |" + " --- | --- |" * len(ts)]
  for lab in labels:
    cells = []
    for t in ts:
      vals = grp.get((lab, t), [])
      cells.append(report.fmt_cell(vals))
      ref = grp.get((reference, t))
      if lab == reference or not vals or not ref:
        cells.append("")
      else:
        w = stats.welch(ref, vals)
        cells.append(f"{w['diff']:+.2f} ({fmt_p(w['p'])})")
    name = f"**{lab}**" if lab == reference else lab
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  return out


def best_rule_rows(study, ts, room: dict, reference: str = REFERENCE) -> list[dict]:
  """Per target: ARSP against the best rule (Welch), and the goals it is measured against."""
  grp = study["groups"]
  labels = rules(stats.method_labels(study["rows"]))
  out = []
  for t in ts:
    a, best = grp.get((reference, t)), stats.best_of(grp, labels, t)
    if not a or not best:
      continue
    w = stats.welch(a, best[1])
    row = {"target": t, "rule": best[0], "rule_mean": float(np.mean(best[1]))}
    row.update({"mean": float(np.mean(a)), "welch": w, "verdict": stats.verdict(w)})
    row["goal_met"] = w["diff"] >= GOAL_POINTS and w["p"] < stats.ALPHA
    hr = room.get((study["meta"]["title"], t), {}).get("headroom")
    row["half_headroom"] = None if hr is None else max(hr, 0.0) / 2
    out.append(row)
  return out


def best_rule_table(brs: list[dict], reference: str = REFERENCE) -> list[str]:
  out = [
    f"| target | best rule | its mean | {reference} | Δ (pts) | p | verdict "
    f"| ≥ best rule + {GOAL_POINTS:g} pt, p < {stats.ALPHA:g} | ≥ best rule + half the headroom |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for b in brs:
    w = b["welch"]
    goal = "met" if b["goal_met"] else f"missed by {max(0.0, GOAL_POINTS - w['diff']):.2f} pts"
    if b["half_headroom"] is None:
      half = "no headroom measured"
    else:
      need = b["half_headroom"]
      ok = w["diff"] >= need and w["p"] < stats.ALPHA
      half = f"{'met' if ok else 'missed'} (needs {need:+.2f}, p < {stats.ALPHA:g})"
    out.append(
      f"| {b['target']:g} | {b['rule']} | {b['rule_mean']:.2f} | {b['mean']:.2f} | "
      f"{w['diff']:+.2f} | {fmt_p(w['p'])} | {b['verdict']} | {goal} | {half} |"
    )
  return out


def control_lines(study, reference: str = REFERENCE) -> list[str]:
  grp = study["groups"]
  ctrl = grp.get(("control", 0.0))
  if not ctrl:
    return []
  out = []
  for t in stats.targets(grp):
    a = grp.get((reference, t))
    if a:
      w = stats.welch(a, ctrl)
      out.append(f"{t:g}: {w['diff']:+.2f} pts ({fmt_p_eq(w['p'])}, {len(a)} vs {len(ctrl)} runs)")
  if not out:
    return []
  return [f"{reference} minus the unpruned control: " + "; ".join(out) + ".", ""]


def tally_lines(study, ts, reference: str = REFERENCE) -> list[str]:
  """How many methods ARSP beats, ties and loses to (Welch, p < ALPHA), per headline target."""
  grp = study["groups"]
  labels = stats.method_labels(study["rows"])
  out = []
  for t in ts:
    comps = report.comparisons(grp, labels, [t], reference)
    if not comps:
      continue
    by = {v: [lab for _, lab, _, vv in comps if vv == v] for v in ("wins", "tie", "loses")}
    parts = [f"ties {len(by['tie'])} of {len(comps)} other methods"]
    if by["wins"]:
      parts.append("wins against " + ", ".join(by["wins"]))
    if by["loses"]:
      parts.append("loses to " + ", ".join(by["loses"]))
    out.append(f"- at {t:g}, {reference} " + "; ".join(parts) + ".")
  return out


def anova_line(study) -> list[str]:
  grp = study["groups"]
  labels = stats.method_labels(study["rows"])
  parts = []
  for t in stats.targets(grp):
    a = stats.anova(grp, labels, t)
    if a:
      parts.append(f"{t:g}: F = {fmt_num(a['F'])}, {fmt_p_eq(a['p'])} ({a['methods']} methods)")
  if not parts:
    return []
  return ["One-way ANOVA across methods (scipy `f_oneway`): " + "; ".join(parts) + ".", ""]


def storage_line(study) -> list[str]:
  """Bits per prunable weight (signs of kept weights + mask, as the exporter encodes them):
  the range of the per-method means at each target."""
  rows = study["rows"]
  parts = []
  for t in [0.0] + stats.targets(study["groups"]):
    means = []
    for lab in stats.method_labels(rows):
      v = [r["bits_per_weight"] for r in report.ok_runs(rows, lab, t) if "bits_per_weight" in r]
      if v:
        means.append(float(np.mean(v)))
    if means:
      name = "unpruned" if t == 0 else f"{t:g}"
      span = (
        f"{min(means):.3f}"
        if max(means) - min(means) < 5e-4
        else (f"{min(means):.3f}–{max(means):.3f}")
      )
      parts.append(f"{name}: {span}")
  if not parts:
    return []
  return [
    "Bits per prunable weight (signs of the kept weights plus the mask, as exported; range of "
    "the per-method means): " + "; ".join(parts) + ".",
    "",
  ]


def data_notes(study) -> list[str]:
  """Runs whose dense start differs from their seed's dense run (re-trained), and the
  (method, target) cells with fewer runs than the study has seeds."""
  rows = study["rows"]
  dense = {r["seed"]: r["test_accuracy"] for r in report.ok_runs(rows, "dense")}
  moved: dict[str, list[str]] = {}
  gaps = []
  for r in rows:
    d = r.get("dense_test_accuracy")
    if r["status"] == "done" and d is not None and r["seed"] in dense and d != dense[r["seed"]]:
      moved.setdefault(r["method"], []).append(
        f"seed {r['seed']} at {r['target_sparsity']:g}: {100 * d:.2f} "
        f"(first: {100 * dense[r['seed']]:.2f})"
      )
  out = []
  for lab, items in moved.items():
    out.append(
      f"- {lab} started from dense starts re-trained with the same seed: " + "; ".join(items) + "."
    )
  if moved:
    diffs = [
      abs(r["dense_test_accuracy"] - dense[r["seed"]]) * 100
      for r in rows
      if r["status"] == "done" and r.get("dense_test_accuracy") is not None and r["seed"] in dense
    ]
    out.append(
      f"- The largest difference between two dense starts of one seed: {max(diffs):.2f} points."
    )
  n_seeds = len({r["seed"] for r in rows})
  grp = study["groups"]
  for lab in stats.method_labels(rows):
    for t in stats.targets(grp):
      n = len(grp.get((lab, t), []))
      if lab != "control" and n < n_seeds:
        gaps.append(f"{lab} at {t:g} ({n} of {n_seeds})")
  if gaps:
    out.append("- Cells with fewer runs than seeds: " + ", ".join(gaps) + ".")
  return out + [""] if out else []


def timing_line(study) -> str:
  rows = [r for r in study["rows"] if r["status"] == "done"]
  wall = [r["wall_seconds"] for r in rows if not np.isnan(r.get("wall_seconds", np.nan))]
  failed = sum(r["status"] == "failed" for r in study["rows"])
  text = f"{len(rows)} finished runs ({failed} failed)"
  if wall:
    text += (
      f", {sum(wall):,.0f} run-seconds in all, {min(wall):.0f}–{max(wall):.0f} s per run "
      "(wall time of each run, contention included)"
    )
  return text


# The 2 x 2 that settles what the agent and the sampling each add (methods.py).
FACTORIAL = {("uniform", "top-k"): "gmp", ("uniform", "sampled"): "arsp_fixed",
             ("agent", "top-k"): "arsp_topk", ("agent", "sampled"): "arsp"}  # fmt: skip


def factorial_effects(study, t: float) -> dict | None:
  """The two main effects of the 2 x 2 ablation at target ``t`` (points), or None unless all
  four cells have runs."""
  cells = {k: study["groups"].get((m, t)) for k, m in FACTORIAL.items()}
  if not all(cells.values()):
    return None
  mean = {k: float(np.mean(v)) for k, v in cells.items()}
  agent = (mean[("agent", "top-k")] + mean[("agent", "sampled")]) / 2
  agent -= (mean[("uniform", "top-k")] + mean[("uniform", "sampled")]) / 2
  sampled = (mean[("uniform", "sampled")] + mean[("agent", "sampled")]) / 2
  sampled -= (mean[("uniform", "top-k")] + mean[("agent", "top-k")]) / 2
  return {"mean": mean, "agent": agent, "sampled": sampled}


def ablation_summary(study) -> str:
  """One clause per target with the 2 x 2 ablation: both main effects, and the agent
  (``arsp``) against random search at equal evaluations (test accuracy, Welch)."""
  grp, parts = study["groups"], []
  for t in stats.targets(grp):
    e = factorial_effects(study, t)
    if e is None:
      continue
    part = (
      f"at {t:g}, the agent's ratios over uniform ones {e['agent']:+.2f} pts and reservoir "
      f"sampling over top-k {e['sampled']:+.2f} pts"
    )
    if grp.get((SEARCH, t)):
      w = stats.welch(grp[("arsp", t)], grp[(SEARCH, t)])
      part += (
        f"; `arsp` vs random search at equal evaluations {w['diff']:+.2f} pts "
        f"({fmt_p_eq(w['p'])}: {stats.verdict(w)})"
      )
    parts.append(part)
  return "; ".join(parts)


def factorial_lines(study) -> list[str]:
  """{uniform, agent} x {top-k, sampled} at each target where all four cells have runs, with
  each factor's effect (mean over the other factor) in points."""
  grp, out = study["groups"], []
  for t in stats.targets(grp):
    e = factorial_effects(study, t)
    if e is None:
      continue
    mean = e["mean"]
    if not out:
      out += [
        "The 2 x 2 ablation (test accuracy %, mean over seeds; rows: who sets the keep ratios, "
        "columns: how masks are drawn):",
        "",
        "| target | ratios | top-k | sampled (reservoir) |",
        "| --- | --- | --- | --- |",
      ]
    for who in ("uniform", "agent"):
      a, b = FACTORIAL[(who, "top-k")], FACTORIAL[(who, "sampled")]
      out.append(
        f"| {t:g} | {who} | {mean[(who, 'top-k')]:.2f} (`{a}`) | "
        f"{mean[(who, 'sampled')]:.2f} (`{b}`) |"
      )
    agent, sampled = e["agent"], e["sampled"]
    out.append(
      f"| {t:g} | effect | the agent over uniform: {agent:+.2f} pts | sampling over top-k: "
      f"{sampled:+.2f} pts |"
    )
  return out + [""] if out else []


GRANULARITY_KEY = "@arsp.granularity="


def granularity_lines(study) -> list[str]:
  """The same method at weight vs word vs channel granularity (``M@arsp.granularity=G`` beside
  ``M``): the sparsity each reached (word and channel masks move in whole words / channels),
  test accuracy, Welch p against weight granularity, and bits per prunable weight as exported."""
  rows, grp = study["rows"], study["groups"]
  labels = stats.method_labels(rows)
  variants = [lab for lab in labels if GRANULARITY_KEY in lab]
  out = []
  for t in stats.targets(grp):
    for base in sorted({lab.split("@")[0] for lab in variants}):
      group = [base] + [v for v in variants if v.split("@")[0] == base]
      group = [lab for lab in group if report.ok_runs(rows, lab, t)]
      if base not in group or len(group) < 2:
        continue
      if not out:
        out += [
          "Mask granularity at the same target (same method, schedule and score; word and "
          "channel masks keep whole 64-bit words per output / whole output channels, so the "
          "sparsity they reach differs from the target; bits per prunable weight as exported):",
          "",
          "| target | method | granularity | sparsity reached | test accuracy | Δ vs weight (p) "
          "| bits per weight |",
          "| --- | --- | --- | --- | --- | --- | --- |",
        ]
      ref = grp[(base, t)]
      for lab in group:
        rs = report.ok_runs(rows, lab, t)
        gran = lab.split(GRANULARITY_KEY)[1] if GRANULARITY_KEY in lab else "weight"
        acc = grp[(lab, t)]
        sp = float(np.mean([r["sparsity"] for r in rs]))
        bits = [r["bits_per_weight"] for r in rs if r.get("bits_per_weight") is not None]
        delta = (
          "–"
          if lab == base
          else f"{np.mean(acc) - np.mean(ref):+.2f} ({fmt_p(stats.welch(acc, ref)['p'])})"
        )
        out.append(
          f"| {t:g} | {base} | {gran} | {sp:.4f} | {report.fmt_cell(acc)} | {delta} | "
          f"{np.mean(bits):.3f} |"
          if bits
          else f"| {t:g} | {base} | {gran} | {sp:.4f} | {report.fmt_cell(acc)} | {delta} | – |"
        )
  return out + [""] if out else []


SEARCH = "arsp_random_search"


def search_lines(study, reference: str = REFERENCE) -> list[str]:
  """The agent against random search at equal evaluations per round: the best and the mean
  candidate reward per round over the rounds at the final budget, where both methods have runs
  with those columns (``grid._search_columns``)."""
  rows = [r for r in study["rows"] if r.get("final_best_reward") is not None]
  by = {}
  for r in rows:
    by.setdefault((r["method"], r["target_sparsity"]), []).append(r)
  ts = sorted({t for (m, t) in by if m == SEARCH and (reference, t) in by})
  if not ts:
    return []
  out = [
    f"**{reference} against random search at equal evaluations** (`{SEARCH}`: a (1 + 15) search "
    "around its best-so-far allocation, as many candidates per round as the agent): the best and "
    "the mean reward (%) of the candidates scored each round, averaged over the rounds at the "
    "final budget, mean ± std over seeds; p is Welch's t-test on the best reward.",
    "",
    "| target | method | rounds | best candidate reward | mean candidate reward | test accuracy | p (best) |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for t in ts:
    methods = [reference, SEARCH] + sorted(
      m for (m, tt) in by if tt == t and m not in (reference, SEARCH)
    )
    ref_best = [100 * r["final_best_reward"] for r in by[(reference, t)]]
    for m in methods:
      rs = by[(m, t)]
      best = [100 * r["final_best_reward"] for r in rs]
      mean = [100 * r["final_mean_reward"] for r in rs]
      acc = [100 * r["test_accuracy"] for r in rs]
      p = "–" if m == reference else report.fmt_p(stats.welch(ref_best, best)["p"])
      out.append(
        f"| {t:g} | {m} | {int(np.mean([r['final_rounds'] for r in rs]))} | "
        f"{np.mean(best):.2f} ± {np.std(best, ddof=1) if len(best) > 1 else 0:.2f} | "
        f"{np.mean(mean):.2f} ± {np.std(mean, ddof=1) if len(mean) > 1 else 0:.2f} | "
        f"{np.mean(acc):.2f} | {p} |"
      )
  return out + [""]


def study_section(study, room: dict, reference: str = REFERENCE) -> list[str]:
  meta, ts = study["meta"], complete_targets(study)
  out = [f"## {study['heading']}", ""]
  if study["about"]:
    out += [study["about"], ""]
  out += [
    f"- Data: `results/{study['dir']}/` (`runs.csv`, `report.md`, `pareto.png`, "
    "`keep_ratios.png`).",
    f"- Machine: {meta['machine'] or 'not recorded'}; {timing_line(study)}.",
    f"- Command: `{meta['command'] or 'not recorded'}`",
    "",
  ]
  out += _dense_and_control(study)
  targets = ", ".join(f"{t:g}" for t in ts)
  out += [
    f"Test accuracy in %, mean ± std over seeds, at the sparsities where every method has "
    f"runs ({targets}). Δ is {reference} minus the method, in points; p is Welch's t-test.",
    "",
  ]
  out += headline_table(study, ts, reference) + [""]
  brs = best_rule_rows(study, rule_targets(study, reference), room, reference)
  if brs:
    out += [f"**{reference} against the best rule** (the baseline with the highest mean):", ""]
    out += best_rule_table(brs, reference) + [""]
  out += tally_lines(study, ts, reference) + [""]
  out += factorial_lines(study)
  out += search_lines(study)  # `arsp` against random search: the same reward set (see about)
  out += granularity_lines(study)
  out += control_lines(study, reference)
  grp, labels, all_ts = (
    study["groups"],
    stats.method_labels(study["rows"]),
    stats.targets(study["groups"]),
  )
  if all_ts != ts:
    out += ["Every target sparsity (mean ± std):", ""]
    out += report.accuracy_table(grp, labels, all_ts, ci=False) + [""]
  out += anova_line(study) + storage_line(study)
  kr = report.keep_ratio_table(study["rows"], labels, all_ts)
  if kr:
    out += ["Final keep ratios of the methods that allocate unevenly (mean [min, max]):", ""]
    out += kr + [""]
  out += report.regression_lines(study["rows"], labels, all_ts) + [""]
  notes = data_notes(study)
  if notes:
    out += ["Notes on the data:", ""] + notes
  return out
