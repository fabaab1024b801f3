"""RESULTS.md's archive: the studies run with earlier code, re-analysed, with no verdict words.

These studies were run without a protocol written before them (their reference was in one
case changed after the results were seen), mostly with 3 seeds, and with code that has since
changed. They stay for the record: accuracy per method and sparsity with 95% t intervals, and
each study's reference against the other methods *paired by seed* (every method of a seed
shared its dense start) with a bootstrap CI, the paired p and Holm's adjustment over the cell —
numbers only, no *wins*, *ties* or *losses*. The {uniform, agent} × {top-k, sampled} ablation,
where a study has it, as two main effects and their interaction, each with a CI.
"""

from __future__ import annotations

import math

from arsp_jax.study import headroom, paired, report, stats
from arsp_jax.study.report import fmt_p

FACTORIAL = {"a0,b0": "gmp", "a0,b1": "arsp_fixed", "a1,b0": "arsp_topk", "a1,b1": "arsp"}


def _ci(d: dict) -> str:
  if math.isnan(d["mean"]):
    return "–"
  if math.isnan(d["ci_low"]):
    return f"{d['mean']:+.2f}"
  return f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"


def paired_lines(study: dict) -> list[str]:
  """The study's reference against every other method at each sparsity: paired by seed."""
  rows, ref = study["rows"], study["reference"]
  labels = [m for m in stats.method_labels(rows) if m not in (ref, "control")]
  out = [
    f"| sparsity | `{ref}` − method | seeds | mean paired difference [95% CI] | paired p | "
    "Holm p (within the sparsity) |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  n = 0
  for t in stats.targets(study["groups"]):
    for c in paired.compare(rows, ref, labels, t):
      if c["n"] < 2:
        continue
      n += 1
      out.append(
        f"| {t:g} | {c['other']} | {c['n']} | {_ci(c)} | {fmt_p(c['p'])} | {fmt_p(c['p_holm'])} |"
      )
  return out + [""] if n else []


def factorial_lines(study: dict) -> list[str]:
  rows = study["rows"]
  out = [
    "| sparsity | seeds | agent effect | sampling effect | interaction |",
    "| --- | --- | --- | --- | --- |",
  ]
  n = 0
  for t in stats.targets(study["groups"]):
    f = paired.factorial(rows, FACTORIAL, t)
    if f is None:
      continue
    n += 1
    out.append(
      f"| {t:g} | {f['seeds']} | {_ci(f['a'])} | {_ci(f['b'])} | {_ci(f['interaction'])} |"
    )
  if not n:
    return []
  return (
    [
      "The 2 × 2 {uniform, agent} × {top-k, sampled} (`gmp`, `arsp_fixed`, `arsp_topk`, "
      "`arsp`): main effects (the mean over the other factor) and interaction, points, with "
      "bootstrap CIs over seeds:",
      "",
    ]
    + out
    + [""]
  )


def study_lines(study: dict) -> list[str]:
  grp = study["groups"]
  labels = stats.method_labels(study["rows"])
  targets = stats.targets(grp)
  meta = study["meta"]
  out = [f"### {study['heading']} (`results/{study['dir']}/`)", ""]
  if study.get("about"):
    out += [study["about"], ""]
  out += [f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", ""]
  ctrl = grp.get(("control", 0.0))
  if ctrl:
    s = stats.summarize(ctrl)
    out += [f"Unpruned control: {s['mean']:.2f} ± {report.fmt_num(s['std'])} (n={s['n']}).", ""]
  out += ["Test accuracy (%), mean ± std [95% t CI] (n):", ""]
  out += report.accuracy_table(grp, labels, targets, ci=True) + [""]
  out += paired_lines(study)
  out += factorial_lines(study)
  return out


def section(studies: list[dict], results_dir: str) -> list[str]:
  """The archive: every non-protocol study, then the earlier headroom measurements."""
  if not studies:
    return []
  _, room_lines = headroom.read_all(results_dir, studies)
  out = [
    "## Archive: studies run with earlier code (no verdicts)",
    "",
    "Kept for the record, re-analysed as the protocol studies are (paired by seed, bootstrap "
    "CIs, Holm within a sparsity), with no verdict words: these studies had no protocol "
    "written before their runs, mostly 3 seeds, and ran code that has since changed (the "
    "first agent in the studies so headed). Nothing in the summary rests on them.",
    "",
  ]
  for s in studies:
    out += study_lines(s)
  if room_lines:
    out += ["### Earlier headroom measurements (0.9-0.95)", ""]
    out += [ln.replace("## Headroom", "#### Headroom", 1) if ln.startswith("## ") else
            ln.replace("### Headroom", "#### Headroom", 1) for ln in room_lines]  # fmt: skip
  return out
