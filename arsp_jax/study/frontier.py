"""The report of a study run under a protocol (``protocol.json``): the compression frontier.

For one model: progress against the protocol (runs finished per arm, code versions, whether
every run of a seed started from the same dense run), the headroom (random allocations against
the rules), accuracy per method and sparsity with 95% t intervals, the accuracy-vs-density
figure on a log-density axis, the density each method needs at the anchor minus 1 and 3 points
and its ratio to the reference's (the proposal's "2x-5x"), the reference's paired, Holm-corrected
comparisons, and the sampling effect per rule. Every statistic is the protocol's (``paired.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from arsp_jax.study import grid, paired, plots, protocol, reproduce, stats
from arsp_jax.study.report import fmt_num, fmt_p

FIGURE = "frontier.png"


def _fmt_ci(d: dict, digits: int = 2, sign: bool = True) -> str:
  m = d["mean"]
  head = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
  if math.isnan(d.get("ci_low", math.nan)):
    return head
  return f"{head} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def targets_of(proto: dict) -> list[float]:
  return sorted({float(t) for arm in proto["arms"] for t in arm["sparsities"]})


def progress_lines(proto: dict, rows: Sequence[dict]) -> list[str]:
  """Runs finished per arm, code versions, dense-start consistency."""
  done = {r["run"] for r in rows if r.get("status") == "done"}
  failed = [r["run"] for r in rows if r.get("status") == "failed"]
  out = ["| arm | open | methods | sparsities | seeds | runs finished |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
  for arm in proto["arms"]:
    sub = {"arms": [dict(arm, open=True)], "seeds": arm["seeds"]}
    names = [s.name for s in protocol.plan(sub, control=False) if s.method != "dense"]
    n_done = sum(n in done for n in names)
    out.append(
      f"| {arm['name']} | {'yes' if arm['open'] else 'not yet'} | {len(arm['methods'])} | "
      f"{', '.join(f'{t:g}' for t in arm['sparsities'])} | {len(arm['seeds'])} | "
      f"{n_done} of {len(names)} |"
    )
  out.append("")
  for arm in proto["arms"]:  # a protocol changed after it was written says so, and why
    if arm.get("amended"):
      out += [f"Arm `{arm['name']}` amended: {arm['amended']}", ""]
  if proto.get("run_order_amended"):
    order = ", ".join(f"{t:g}" for t in proto.get("run_order", []))
    out += [f"Run order amended (next: {order}): {proto['run_order_amended']}", ""]
  versions = sorted({r.get("code_version") or "not recorded" for r in rows if r["run"] in done})
  training = sorted({r.get("training_code") or "not recorded" for r in rows if r["run"] in done})
  if versions:
    out.append(
      f"Code version(s) of the finished runs: {', '.join(f'`{v}`' for v in versions)}; "
      f"training code: {', '.join(f'`{v}`' for v in training)}."
    )
    if len(training) > 1:
      out.append(
        "**The runs span several versions of the training code**: check that none of the "
        "changes between them alters training before comparing runs across them (the "
        "reproductions below, where listed)."
      )
  mixed = _mixed_dense_starts(rows)
  if mixed:
    out.append(
      f"**Seed(s) {', '.join(map(str, mixed))}: runs started from different dense runs** "
      "(fingerprints differ): their comparisons are not paired."
    )
  elif versions:
    out.append("Every run of a seed started from the same dense run (fingerprints agree).")
  if failed:
    out.append(f"Failed runs: {', '.join(failed)}.")
  return out + [""]


def _mixed_dense_starts(rows: Sequence[dict]) -> list[int]:
  seen: dict[int, set] = {}
  for r in rows:
    fp = r.get("dense_fingerprint")
    if r.get("status") == "done" and fp:
      seen.setdefault(int(r["seed"]), set()).add(fp)
  return sorted(s for s, fps in seen.items() if len(fps) > 1)


def accuracy_lines(rows, labels: Sequence[str], targets: Sequence[float]) -> list[str]:
  grp = stats.groups(rows)
  out = [
    "| method | " + " | ".join(f"{t:g}" for t in targets) + " |",
    "| --- |" + " --- |" * len(targets),
  ]
  for lab in labels:
    cells = []
    for t in targets:
      v = grp.get((lab, t), [])
      if not v:
        cells.append("–")
        continue
      s = stats.summarize(v)
      ci = f" [{fmt_num(s['ci_low'])}, {fmt_num(s['ci_high'])}]" if s["n"] > 1 else ""
      cells.append(f"{s['mean']:.2f}{ci} (n={s['n']})")
    if any(c != "–" for c in cells):
      out.append(f"| {lab} | " + " | ".join(cells) + " |")
  return out + [""]


def headroom_cells(proto: dict) -> list[tuple[dict, float]]:
  """(arm, sparsity) of every headroom measurement, by sparsity: the headroom arm's (which
  decides the studies' cell) and those of any other arm holding both rules and random
  allocations at a sparsity the headroom arm lacks (a description: it decides nothing)."""
  main = protocol.headroom_arm(proto)
  if main is None:
    return []
  cells = [(main, float(t)) for t in main["sparsities"]]
  for arm in proto["arms"]:
    alloc = [m for m in arm["methods"] if m.startswith("random_alloc")]
    if arm is not main and alloc and len(alloc) < len(arm["methods"]):
      cells += [(arm, float(t)) for t in arm["sparsities"] if all(t != c[1] for c in cells)]
  return sorted(cells, key=lambda c: c[1])


def headroom_lines(proto: dict, rows) -> list[str]:
  cells = headroom_cells(proto)
  if not cells:
    return []
  main = protocol.headroom_arm(proto)
  out = [
    "| sparsity | seeds | allocations | best rule (mean) | best allocation (mean) | naive "
    "headroom | median allocation − best rule | allocations above the best rule | "
    "cross-validated headroom [95% CI] |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  n, others = 0, []
  for arm, t in cells:
    h = protocol.arm_headroom(arm, rows, t)
    if h is None:
      continue
    n += 1
    if arm is not main:
      others.append(f"{t:g} from the arm `{arm['name']}`")
    out.append(
      f"| {t:g} | {h['seeds']} | {h['allocations']} | {h['best_rule']} ({h['best_rule_mean']:.2f}) | "
      f"{h['best_allocation']} ({h['best_allocation_mean']:.2f}) | {h['naive']:+.2f} | "
      f"{h['median_allocation_minus_best_rule']:+.2f} | {h['beat_best_rule']} of "
      f"{h['allocations']} | {h['cross_validated']:+.2f} [{h['ci_low']:+.2f}, "
      f"{h['ci_high']:+.2f}] |"
    )
  if not n:
    return ["Not measured yet: the headroom needs both seeds of every rule and of every "
            "random allocation the protocol declares.", ""]  # fmt: skip
  return out + [
    "",
    "Points of test accuracy. *Naive*: the best allocation's mean minus the best rule's "
    "(a maximum over many noisy means: biased upwards). *Cross-validated*: the allocation and "
    "the rule chosen on one seed, compared on the other (both orders averaged); its CI "
    "resamples the allocations."
    + (f" The headroom arm (`{main['name']}`) decides the cell the later arms run first; "
       f"{', '.join(others)}: a description, it decides nothing." if others else ""),
    "",
  ]  # fmt: skip


def iso_lines(proto: dict, rows, labels: Sequence[str], targets: Sequence[float]) -> list[str]:
  """Density needed at the anchor minus each drop; ratios to the reference when it has runs."""
  ref = proto["reference"]["method"]
  a = paired.anchor(rows)
  if math.isnan(a):
    return ["No dense start has finished yet.", ""]
  drops = proto.get("frontier", {}).get("accuracy_drops", [1.0, 3.0])
  has_ref = any(r["method"] == ref and r.get("status") == "done" for r in rows)
  head = "| method | " + " | ".join(f"density at {a - d:.2f}% (−{d:g})" for d in drops)
  if has_ref:
    head += " | " + " | ".join(f"ratio to {ref} at −{d:g} [95% CI]" for d in drops)
  out = [head + " |", "| --- |" + " --- |" * (len(drops) * (2 if has_ref else 1))]
  for lab in labels:
    if len(paired.mean_curve(rows, lab, targets, proto["seeds"])) < 2:
      continue
    cells = [needed_density(proto, rows, lab, targets, a - d)[1] for d in drops]
    if has_ref:
      for d in drops:
        c = paired.compression_ratio(rows, ref, lab, targets, d, seeds=proto["seeds"])
        cells.append(ratio_text(c, ref, lab))
    out.append(f"| {lab} | " + " | ".join(cells) + " |")
  running = any("pending" in line or "to come" in line for line in out[2:])
  return out + [
    "",
    f"Anchor: the dense start's mean test accuracy, {a:.2f}%. A density is interpolated "
    "linearly in log10(density) between the method's measured sparsities (its mean over the "
    "study's seeds, at the sparsities where it has all of them); *≤* marks a method still above "
    "the accuracy at its sparsest measured point (the density it needs is at most that). A "
    "ratio is the method's density over the reference's (> 1: the reference keeps fewer "
    "connections at equal accuracy), with a bootstrap CI over the seeds; *≥*/*≤*: a bound, "
    "where a method is still above the accuracy at its sparsest point."
    + (
      " While the study runs, *to come*: the sparsities where one of the two methods does not "
      "have every seed yet; *pending*: not reached at the sparsities run so far."
      if running
      else ""
    ),
    "",
  ]


def needed_density(proto: dict, rows, method: str, targets, accuracy: float) -> tuple[float, str]:
  """The density ``method`` needs to reach ``accuracy`` (nan: not reached), from its mean
  curve over the study's seeds at the sparsities where it has all of them, and its text: the
  density, ``≤`` it where the method is still above the accuracy at its sparsest point, *not
  reached*, or *pending* where it is not reached so far and a sparsity is still to come."""
  curve = paired.mean_curve(rows, method, targets, proto["seeds"])
  dens = paired.density_at(curve, accuracy)
  if math.isnan(dens):
    return dens, "pending" if len(curve) < len(targets) else "not reached"
  return dens, f"{'≤ ' if min(curve.values()) >= accuracy else ''}{dens:.4f}"


def _ref_open(proto: dict) -> bool:
  ref = proto["reference"]["method"]
  return any(a["open"] and ref in a["methods"] for a in proto["arms"])


def ratio_text(c: dict, reference: str, other: str) -> str:
  """A compression ratio (paired.compression_ratio's dict) in words: "pending" before both
  methods have every seed at two sparsities, which method does not reach the accuracy, a bound
  (≥, ≤) where a method is still above it at its sparsest point used, and the sparsities still
  to come ("pending" where a method does not reach the accuracy at those it has: one to come
  may)."""
  if not c["seeds"] or c["points"] < 2:
    return "pending"
  ci = "" if math.isnan(c["ci_low"]) else f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
  todo = sorted({t for ts in c["missing"].values() for t in ts})
  todo = f"{', '.join(f'{t:g}' for t in todo)} to come" if todo else ""
  if math.isnan(c["ratio"]) and todo:
    return f"pending ({todo})"  # a sparsity still to run may reach it
  if math.isnan(c["ratio"]):
    value = "– (" + " and ".join(
      m for m, k in ((reference, "density_reference"), (other, "density_other"))
      if math.isnan(c[k])) + " does not reach it)"  # fmt: skip
  elif c["reference_bound"] and c["other_bound"]:
    value = "beyond the sparsities measured"
  elif c["reference_bound"]:
    value = f"≥ {c['ratio']:.2f}x"  # the reference's density is an upper bound
  elif c["other_bound"]:
    value = f"≤ {c['ratio']:.2f}x"
  else:
    value = f"{c['ratio']:.2f}x{ci}"
  return f"{value} (n={c['seeds']}{'; ' + todo if todo else ''})"


def comparison_lines(proto: dict, rows, targets: Sequence[float]) -> list[str]:
  ref = proto["reference"]["method"]
  others = proto["reference"].get("compared_with", [])
  alpha = float(proto["statistics"]["alpha"])
  out = [
    f"| sparsity | {ref} − method | n | mean difference [95% CI] | paired p | Holm p | verdict |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  n, pending = 0, False
  for t in targets:
    cell = paired.compare(rows, ref, others, t, alpha)
    # a verdict needs the whole family: every comparison with every seed of the protocol
    complete = all(c["n"] == len(proto["seeds"]) for c in cell)
    for c in cell:
      if c["n"] == 0:
        continue
      n += 1
      pending |= not complete
      out.append(
        f"| {t:g} | {c['other']} | {c['n']} | {_fmt_ci(c)} | {fmt_p(c['p'])} | "
        f"{fmt_p(c['p_holm'])} | {c['verdict'] if complete else 'pending'} |"
      )
  if not n:
    why = (
      "no run of it has finished yet" if _ref_open(proto) else "it is in the arm that opens last"
    )
    return [f"Not run yet: the reference `{ref}`: {why}.", ""]
  return out + [
    "",
    f"Paired by seed; Holm's correction over every comparison of `{ref}` in a sparsity; "
    f"*wins*/*loses* when the Holm-adjusted p < {alpha:g}, *tie* otherwise."
    + (
      f" *pending*: the sparsity's family is not complete yet (a method without all "
      f"{len(proto['seeds'])} seeds); its Holm p is over the comparisons run so far, a lower "
      "bound on the final one, so no verdict is drawn."
      if pending
      else ""
    ),
    "",
  ]


def sampling_lines(proto: dict, rows, targets: Sequence[float]) -> list[str]:
  pairs = proto.get("sampling_effect", {}).get("pairs", [])
  alpha = float(proto["statistics"]["alpha"])
  out = [
    "| sparsity | rule | sampled twin | n | sampled − top-k [95% CI] | paired p | Holm p | verdict |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  n, pending = 0, False
  for t in targets:
    cell = []
    for rule, twin in pairs:
      d = paired.differences(paired.by_seed(rows, twin, t), paired.by_seed(rows, rule, t))
      if d:
        cell.append((rule, twin, paired.paired(d)))
    complete = len(cell) == len(pairs) and all(c[2]["n"] == len(proto["seeds"]) for c in cell)
    pending |= bool(cell) and not complete
    for (rule, twin, res), adj in zip(cell, paired.holm([c[2]["p"] for c in cell])):
      n += 1
      v = paired.verdict(res["mean"], adj, alpha).replace("wins", "helps").replace("loses", "hurts")
      v = v if complete else "pending"
      out.append(
        f"| {t:g} | {rule} | {twin} | {res['n']} | {_fmt_ci(res)} | {fmt_p(res['p'])} | "
        f"{fmt_p(adj)} | {v} |"
      )
  if not n:
    return ["No pair of a rule and its sampled twin has finished a seed yet.", ""]
  return out + [
    "",
    "Reservoir-sampled masks minus top-k masks under the same rule's keep ratios, paired by "
    "seed; Holm over the rules of a sparsity."
    + (" *pending*: that sparsity's pairs are not all in with every seed yet." if pending else ""),
    "",
  ]


def factorial_lines(proto: dict, rows, targets: Sequence[float]) -> list[str]:
  cells = proto.get("factorial", {}).get("cells")
  if not cells:
    return []
  out = [
    "| sparsity | seeds | agent effect | sampling effect | interaction |",
    "| --- | --- | --- | --- | --- |",
  ]
  n = 0
  for t in targets:
    f = paired.factorial(
      rows,
      {
        "a0,b0": cells["uniform,top-k"],
        "a0,b1": cells["uniform,sampled"],
        "a1,b0": cells["agent,top-k"],
        "a1,b1": cells["agent,sampled"],
      },
      t,
    )
    if f is None:
      continue
    n += 1
    out.append(
      f"| {t:g} | {f['seeds']} | {_fmt_ci(f['a'])} | {_fmt_ci(f['b'])} | "
      f"{_fmt_ci(f['interaction'])} |"
    )
  if not n:
    return []
  return out + ["", "Points; each with a bootstrap 95% CI over seeds.", ""]


def y_range(means: Sequence[float], anchor: float) -> tuple[float, float]:
  """The frontier plot's y limits: from 3 points under the lowest mean that is within 15 points
  of the dense start ``anchor`` (every mean without one) to 1.5 over the anchor (2 over the
  highest mean without one), inside 0-100."""
  learning = [m for m in means if math.isnan(anchor) or m >= anchor - 15]
  floor = max(0.0, min(learning or means or [3.0]) - 3)
  top = max(means or [98.0]) + 2 if math.isnan(anchor) else anchor + 1.5
  return floor, min(100.0, top)


def method_colors(proto: dict, labels: Sequence[str]) -> dict[str, tuple]:
  """One colour per method, except that a rule's reservoir-sampled twin (the protocol's
  ``sampling_effect.pairs``) takes its rule's colour (drawn dashed): the pairs read at a glance,
  and no two other methods share a colour while they fit the palette; the reference is black."""
  ref = proto["reference"]["method"]
  base = {twin: rule for rule, twin in proto.get("sampling_effect", {}).get("pairs", [])}
  owners = list(dict.fromkeys(base.get(lab, lab) for lab in labels if lab != ref))
  palette = matplotlib.colormaps["tab10" if len(owners) <= 10 else "tab20"].colors
  return {
    lab: (0.0, 0.0, 0.0) if lab == ref else palette[owners.index(base.get(lab, lab)) % len(palette)]
    for lab in labels
  }


def plot(proto: dict, rows, labels: Sequence[str], targets: Sequence[float], path: str) -> None:
  """Accuracy vs density (log axis), mean with a 95% t interval per point (clipped to 0-100).
  The y axis covers the methods that still learn (means within 15 points of the dense start);
  a point below it (a collapsed run, e.g. ``global_gmp`` pruning a layer away) is drawn as a
  triangle on the lower edge and named in the corner."""
  fig = Figure(figsize=(8, 5))
  ax = fig.subplots()
  grp = stats.groups(rows)
  ref = proto["reference"]["method"]
  a = paired.anchor(rows)
  series = {}
  for lab in labels:
    pts = [(1 - t, stats.summarize(grp[(lab, t)])) for t in targets if grp.get((lab, t))]
    if pts:
      series[lab] = pts
  floor, top = y_range([p["mean"] for pts in series.values() for _, p in pts], a)
  colors = method_colors(proto, list(series))
  twins = {twin for _, twin in proto.get("sampling_effect", {}).get("pairs", [])}
  off = []
  for lab, pts in series.items():
    x = [p[0] for p in pts]
    y = [p[1]["mean"] for p in pts]
    shown = [p[1]["n"] > 1 and p[1]["mean"] >= floor for p in pts]  # no whiskers off the axis
    lo = [p[1]["mean"] - max(p[1]["ci_low"], 0.0) if k else 0.0 for p, k in zip(pts, shown)]
    hi = [min(p[1]["ci_high"], 100.0) - p[1]["mean"] if k else 0.0 for p, k in zip(pts, shown)]
    style = {"marker": "*", "markersize": 11, "linewidth": 2.4} if lab == ref else {
      "marker": "o", "markersize": 4, "linewidth": 1.1,
      "linestyle": "--" if lab in twins else "-"}  # fmt: skip
    line = ax.errorbar(x, y, yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], capsize=3, label=lab,
                       color=colors[lab], **style)  # fmt: skip
    below = [(xi, yi) for xi, yi in zip(x, y) if yi < floor]
    if below:
      ax.plot([b[0] for b in below], [floor] * len(below), "v", color=line[0].get_color())
      off.append(f"{lab}: " + ", ".join(f"{yi:.1f}% at {xi:g}" for xi, yi in below))
  if not math.isnan(a):
    for d in proto.get("frontier", {}).get("accuracy_drops", [1.0, 3.0]):
      ax.axhline(a - d, color="gray", linewidth=0.8, linestyle=":")
      ax.text(0.01, a - d, f"dense − {d:g}", fontsize=7, va="bottom", color="gray",
              transform=ax.get_yaxis_transform())  # fmt: skip
  ax.set_ylim(floor, top)
  if off:
    ax.text(0.99, 0.01, "below the axis (mean test accuracy at density):\n" + "\n".join(off),
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="dimgray")  # fmt: skip
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("density of the binary layers (kept fraction, log scale)")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, ncol=2, loc="lower left")
  ax.set_title(proto.get("title", proto["study"]), fontsize=9)
  fig.tight_layout()
  plots.save_figure(fig, path)


def methods_of(proto: dict, rows) -> list[str]:
  have = {r["method"] for r in rows if r.get("status") == "done"}
  return [m for m in protocol.declared_methods(proto) if m in have and "random_alloc" not in m]


def section(
  study_dir: str, heading_level: str = "##", figure_link: str | None = None, write: bool = True
) -> list[str]:
  """The markdown of one protocol study (its runs.csv and protocol.json); ``write``: (re)draws
  its figure."""
  proto = protocol.find(study_dir)
  rows = grid.read_csv(os.path.join(study_dir, "runs.csv"))
  targets = targets_of(proto)
  labels = methods_of(proto, rows)
  if write:
    plot(proto, rows, labels, targets, os.path.join(study_dir, FIGURE))
  h = heading_level + "#"
  link = figure_link or FIGURE
  ref = proto["reference"]["method"]
  return (
    [f"{heading_level} {proto.get('title', proto['study'])}", "", proto.get("about", ""), ""]
    + [
      f"Protocol: `{os.path.basename(study_dir)}/protocol.json` ({proto.get('written', '')}); "
      f"reference `{ref}`; metric: {proto['metric']}.",
      "",
    ]  # fmt: skip
    + [f"{h} Progress", ""]
    + progress_lines(proto, rows)
    + reproduce.report_lines(study_dir)
    + ([""] if reproduce.load(study_dir) else [])
    + [f"{h} Headroom: can the allocation matter here?", ""]
    + headroom_lines(proto, rows)
    + [f"{h} Test accuracy (%), mean [95% t CI] (n seeds)", ""]
    + accuracy_lines(rows, ["control"] + labels, targets)
    + [f"![accuracy vs density]({link})", ""]
    + [f"{h} Compression at iso-accuracy", ""]
    + iso_lines(proto, rows, labels, targets)
    + [f"{h} `{ref}` against every other method", ""]
    + comparison_lines(proto, rows, targets)
    + [f"{h} Sampling on every rule", ""]
    + sampling_lines(proto, rows, targets)
    + factorial_lines(proto, rows, targets)
  )


def unreached_text(proto: dict, rows, rules: Sequence[str], accuracy: float) -> str:
  """Why no ratio, when no rule reaches ``accuracy`` at any sparsity: the reference's density if
  it does, else the best mean (over the study's seeds) at the densest sparsity studied."""
  ref = proto["reference"]["method"]
  targets = targets_of(proto)
  dens, text = needed_density(proto, rows, ref, targets, accuracy)
  if not math.isnan(dens):
    return f"no rule reaches the accuracy ({accuracy:.2f}%); `{ref}` does, at density {text}"
  t = min(targets)
  means = {m: paired.mean_curve(rows, m, [t], proto["seeds"]).get(1.0 - t) for m in [*rules, ref]}
  means = {m: v for m, v in means.items() if v is not None}
  if not means:
    return "no rule reaches the accuracy"
  best = max(means, key=means.get)
  return (
    f"neither `{ref}` nor any rule reaches the accuracy ({accuracy:.2f}%): at the densest "
    f"sparsity studied, {t:g}, the best mean is {best}'s {means[best]:.2f}%"
  )


def summary_line(study_dir: str) -> str:
  """One line for RESULTS.md's summary: the compression ratio at iso-accuracy against the best
  rule (the rule needing the lowest density, top-k or sampled: the hardest comparator), the
  headroom and the sampling effect at the headline sparsities, and the study's progress."""
  proto = protocol.find(study_dir)
  rows = grid.read_csv(os.path.join(study_dir, "runs.csv"))
  targets = targets_of(proto)
  ref = proto["reference"]["method"]
  rules = [m for m in proto["reference"].get("compared_with", []) if m in methods_of(proto, rows)]
  rules = [m for m in rules if not m.startswith("arsp")] + [m for m in rules if m == "arsp_fixed"]
  parts = []
  has_ref = any(r["method"] == ref and r.get("status") == "done" for r in rows)
  a = paired.anchor(rows)
  for d in proto.get("frontier", {}).get("accuracy_drops", [1.0, 3.0]):
    if not has_ref:
      break
    need = {m: needed_density(proto, rows, m, targets, a - d) for m in rules}
    dens = {m: v for m, (v, _) in need.items() if not math.isnan(v)}
    if not dens:
      if any(text == "pending" for _, text in need.values()):
        parts.append(f"at −{d:g} points pending (no rule reaches it at the sparsities run so far)")
      else:
        parts.append(f"at −{d:g} points {unreached_text(proto, rows, rules, a - d)}")
      continue
    best = min(dens, key=dens.get)
    c = paired.compression_ratio(rows, ref, best, targets, d, seeds=proto["seeds"])
    text = ratio_text(c, ref, best)
    if text == "pending":
      parts.append(f"at −{d:g} points pending (`{ref}` and {best}, the best rule so far, do not "
                   "have every seed at two sparsities yet)")  # fmt: skip
    else:
      parts.append(f"at −{d:g} points {text.replace(' (', ' vs ' + best + ' (', 1)}")
  comp = (
    f"`{ref}`'s compression at iso-accuracy against the best rule: " + "; ".join(parts)
    if parts
    else f"`{ref}`'s compression at iso-accuracy: not measured yet ("
    + (
      "no run of it has finished"
      if _ref_open(proto)
      else "its arm opens last, with the agent's final defaults"
    )
    + ")"  # fmt: skip
  )
  room = []
  for arm, t in headroom_cells(proto):
    h = protocol.arm_headroom(arm, rows, t)
    if h:
      room.append(
        f"{h['cross_validated']:+.2f} [{h['ci_low']:+.2f}, {h['ci_high']:+.2f}] at {t:g} "
        f"({h['allocations']} allocations)"
      )
  samp = []
  for t in proto.get("headline_sparsities", []):
    diffs = []
    for rule, twin in proto.get("sampling_effect", {}).get("pairs", []):
      d = paired.differences(paired.by_seed(rows, twin, t), paired.by_seed(rows, rule, t))
      diffs += list(d.values())
    if len(diffs) >= 2:
      res = paired.paired(diffs)
      samp.append(f"{_fmt_ci(res)} at {t:g} ({res['n']} rule-seed pairs)")
  done = sum(r.get("status") == "done" for r in rows)
  planned = len(protocol.plan(proto, open_only=False))
  line = f"- **{proto.get('title', proto['study'])}**: {comp}."
  line += " Cross-validated headroom: " + ("; ".join(room) if room else "not measured yet") + "."
  line += " Sampled − top-k masks, pooled over the rules: " + (
    "; ".join(samp) if samp else "not measured yet"
  )
  return line + f". {done} of {planned} planned runs finished."
