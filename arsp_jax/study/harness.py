"""Comparison harness: a grid of methods x sparsities x seeds, statistics, plots.

  python -m arsp_jax.compare --workdir=studies/fmnist_mlp \\
      --methods=arsp,random,magnitude,global_magnitude,taylor,gmp \\
      --sparsities=0.5,0.8,0.9,0.95 --seeds=3

Every pruning run of a seed starts from the same dense run (``dense_s<seed>``, trained once)
and an unpruned ``control`` is trained through the same phases, so every method gets the same
start, the same number of epochs, the same fine-tuning and the same evaluation. A method may
carry a score, ``arsp:taylor``, to compare ARSP's survival scores.

Runs live in ``<workdir>/runs/<name>/`` (each a ``train.py`` workdir: rerunning resumes it).
Finished runs are skipped. Several harness processes may work on the same study at once
(e.g. one per GPU, or to fill a big machine): a run is claimed by atomically creating
``runs/<name>.lock``; a lock whose process is gone is taken over, and the run resumes from
its checkpoints. When no run is left, the study's files are written (each atomically):

* ``runs.csv``  — one row per run;
* ``report.md`` — mean, std and 95% CI per (method, sparsity), Welch t-tests of ARSP against
  every other method, one-way ANOVA across methods, regressions of accuracy on per-layer keep
  ratios, and a plain statement of where ARSP wins, ties or loses;
* ``pareto.png`` (accuracy vs sparsity and vs effective bits per weight) and
  ``keep_ratios.png`` (the agent's per-layer keep ratios over rounds).

``--report_only`` rewrites those files from the finished runs without training.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

REFERENCE = "arsp"


# ----------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str  # directory under <workdir>/runs
  label: str  # method as reported (e.g. "arsp", "arsp:taylor", "control")
  method: str  # --method
  score: str | None  # --score override
  target: float  # target sparsity (0 for dense/control)
  seed: int
  depends: str | None  # the dense run this one starts from
  overrides: tuple = ()  # ((config key, value text), ...) of a variant: arsp@arsp.delta=0.02


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _fmt_sp(x: float) -> str:
  return f"{x:g}"


def plan_grid(
  methods: Sequence[str], sparsities: Sequence[float], seeds: Sequence[int], control: bool = True
) -> list[RunSpec]:
  """The runs of a study, in execution order: dense starts, controls, then the pruning runs
  sparsity-major (the sparsities listed first finish first)."""
  from arsp_jax.pruning import methods as methods_lib

  specs = [RunSpec(f"dense_s{s}", "dense", "dense", None, 0.0, s, None) for s in seeds]
  if control:
    specs += [
      RunSpec(f"control_s{s}", "control", "control", None, 0.0, s, f"dense_s{s}") for s in seeds
    ]
  for sp in sparsities:
    for label in methods:
      head, *variant = label.split("@")
      method, _, score = head.partition(":")
      if methods_lib.get(method) is None or method == "control":
        raise ValueError(
          f"--methods: {label!r} is not a pruning method; choose from "
          f"{', '.join(m for m in methods_lib.REGISTRY if m != 'control')} "
          f"(optionally with a score, arsp:taylor, and config overrides, "
          f"arsp@arsp.delta=0.02)."
        )
      overrides = []
      for item in variant:
        key, eq, value = item.partition("=")
        if not eq or not key:
          raise ValueError(f"--methods: {label!r}: a variant is method@key=value.")
        overrides.append((key, value))
      for s in seeds:
        tag = re.sub(r"[^A-Za-z0-9_.+-]", "-", label.replace("@", "+"))
        specs.append(
          RunSpec(
            f"{tag}_sp{_fmt_sp(sp)}_s{s}",
            label,
            method,
            score or None,
            float(sp),
            s,
            f"dense_s{s}",
            tuple(overrides),
          )
        )
  return specs


def run_config(base, spec: RunSpec, runs_dir: str):
  """The train.py configuration of one run of the study."""
  from arsp_jax import configs as config_lib

  over: dict[str, Any] = {"method": spec.method, "seed": spec.seed}
  if spec.depends:
    over["init_from"] = os.path.join(runs_dir, spec.depends)
  if spec.method not in ("dense", "control"):
    over["arsp.target_sparsity"] = spec.target
  if spec.score:
    over["arsp.score"] = spec.score
  for key, value in spec.overrides:
    over[key] = config_lib.parse_value(value)
  return config_lib.apply_overrides(base, over)


# ----------------------------------------------------------------------------------------------
# Claiming runs (several harness processes on one study)
# ----------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def claim(lock_path: str) -> bool:
  """Atomically creates ``lock_path`` (O_EXCL); takes over a lock whose process is gone."""
  for _ in range(2):
    try:
      fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(lock_path) as f:
          owner = json.load(f)
      except (OSError, ValueError):
        # Being written right now (or empty after a crash): treat as held unless old.
        try:
          if time.time() - os.path.getmtime(lock_path) < 60:
            return False
        except OSError:
          continue
        owner = {}
      if owner.get("host") == socket.gethostname() and _alive(int(owner.get("pid", -1))):
        return False
      if owner.get("host") not in (None, socket.gethostname()):
        return False  # another machine's lock: never steal it
      try:
        os.unlink(lock_path)  # stale: its process is gone; only one unlink+O_EXCL wins
      except FileNotFoundError:
        pass
      continue
    with os.fdopen(fd, "w") as f:
      json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
    return True
  return False


def release(lock_path: str) -> None:
  try:
    os.unlink(lock_path)
  except FileNotFoundError:
    pass


def _state(runs_dir: str, name: str) -> str:
  d = os.path.join(runs_dir, name)
  if os.path.exists(os.path.join(d, "results.json")):
    return "done"
  if os.path.exists(os.path.join(d, "failed.json")):
    return "failed"
  return "todo"


def run_grid(
  base,
  specs: Sequence[RunSpec],
  workdir: str,
  *,
  log: Callable[[str], None] = print,
  poll_seconds: float = 5.0,
  max_runs: int | None = None,
) -> dict:
  """Runs every unfinished run this process can claim; waits for runs held by others.

  Returns counts {"ran", "skipped", "failed"}. A run that stops with a user-facing error
  (non-finite loss, bad config, data) is recorded in ``<run>/failed.json`` and not retried
  (delete that file to retry).
  """
  from arsp_jax import configs as config_lib
  from arsp_jax import data as data_lib
  from arsp_jax.export import summary as report
  from arsp_jax.train import checkpoint as ckpt_lib
  from arsp_jax.train import loop

  runs_dir = os.path.join(os.path.abspath(workdir), "runs")
  os.makedirs(runs_dir, exist_ok=True)
  counts = {"ran": 0, "skipped": 0, "failed": 0}
  counts["skipped"] = sum(_state(runs_dir, s.name) != "todo" for s in specs)
  while True:
    pending = [s for s in specs if _state(runs_dir, s.name) == "todo"]
    if not pending or (max_runs is not None and counts["ran"] >= max_runs):
      return counts
    progressed = False
    for spec in pending:
      if max_runs is not None and counts["ran"] >= max_runs:
        break
      if _state(runs_dir, spec.name) != "todo":
        continue
      if spec.depends and _state(runs_dir, spec.depends) != "done":
        continue  # its dense start is not finished (another process has it, or it failed)
      lock = os.path.join(runs_dir, spec.name + ".lock")
      if not claim(lock):
        continue
      try:
        if _state(runs_dir, spec.name) != "todo":  # finished while we looked
          continue
        run_dir = os.path.join(runs_dir, spec.name)
        cfg = run_config(base, spec, runs_dir)
        log(
          f"[{spec.name}] start ({spec.label}, target sparsity {spec.target:g}, seed {spec.seed})"
        )
        t0 = time.time()
        try:
          res = loop.run(
            cfg, run_dir, progress=False, log=lambda msg, n=spec.name: log(f"[{n}] {msg}")
          )
        except (
          loop.TrainingError,
          config_lib.ConfigError,
          data_lib.DataError,
          ckpt_lib.CheckpointError,
        ) as e:
          os.makedirs(run_dir, exist_ok=True)
          report.write_json_atomic(
            os.path.join(run_dir, "failed.json"), {"error": str(e), "type": type(e).__name__}
          )
          log(f"[{spec.name}] FAILED: {e}")
          counts["failed"] += 1
          continue
        wall = time.time() - t0
        report.write_json_atomic(
          os.path.join(run_dir, "harness.json"),
          {"wall_seconds": wall, "host": socket.gethostname(), "pid": os.getpid()},
        )
        counts["ran"] += 1
        progressed = True
        log(
          f"[{spec.name}] done in {wall:.0f} s: test accuracy "
          f"{100 * res['test_accuracy']:.2f}%, sparsity {res['sparsity']:.4f}"
        )
      finally:
        release(lock)
    if not progressed:
      blocked = [s for s in specs if _state(runs_dir, s.name) == "todo"]
      if not blocked:
        return counts
      # Everything left is held by another process, or waits for a dense start that failed.
      deps_failed = [s for s in blocked if s.depends and _state(runs_dir, s.depends) == "failed"]
      if len(deps_failed) == len(blocked):
        for s in deps_failed:
          log(f"[{s.name}] skipped: its dense start {s.depends} failed")
        return counts
      time.sleep(poll_seconds)


# ----------------------------------------------------------------------------------------------
# Collecting and reporting
# ----------------------------------------------------------------------------------------------


def bits_per_weight(results: dict) -> float:
  """Stored bits per prunable connection of the binary layers (signs + mask as the exporter
  encodes them; for results written before it existed, the entropy bound ``H(d) + d``)."""
  size = results.get("size", {})
  if "binary_bits_per_weight" in size:  # the exporter's real encoding (compress.py)
    return float(size["binary_bits_per_weight"])
  n = size.get("prunable_connections") or results.get("params") or 0
  if not n:
    return float("nan")
  d = 1.0 - float(results["sparsity"])
  if d >= 1.0:
    return 1.0
  from arsp_jax.export import summary as report

  return d + report.binary_entropy(d)


def collect(workdir: str, specs: Sequence[RunSpec]) -> list[dict]:
  """One row per finished run (failed runs get status 'failed')."""
  runs_dir = os.path.join(os.path.abspath(workdir), "runs")
  rows = []
  for spec in specs:
    d = os.path.join(runs_dir, spec.name)
    st = _state(runs_dir, spec.name)
    if st == "todo":
      continue
    row: dict[str, Any] = {
      "run": spec.name,
      "method": spec.label,
      "target_sparsity": spec.target,
      "seed": spec.seed,
      "status": st,
    }
    if st == "failed":
      with open(os.path.join(d, "failed.json")) as f:
        row["error"] = json.load(f).get("error", "")
      rows.append(row)
      continue
    with open(os.path.join(d, "results.json")) as f:
      res = json.load(f)
    wall = float("nan")
    if os.path.exists(os.path.join(d, "harness.json")):
      with open(os.path.join(d, "harness.json")) as f:
        wall = json.load(f).get("wall_seconds", wall)
    row.update(
      {
        "sparsity": res["sparsity"],
        "dense_test_accuracy": res.get("dense_test_accuracy"),
        "test_accuracy": res["test_accuracy"],
        "val_accuracy": res.get("val_accuracy"),
        "bits_per_weight": bits_per_weight(res),
        "hyperscore": res.get("hyperscore"),
        "train_seconds": res.get("train_seconds"),
        "wall_seconds": wall,
        "score": res.get("score", ""),
        "controller": res.get("controller", ""),
      }
    )
    kr = res.get("keep_ratios")
    if kr and kr.get("per_round"):
      for layer, r in zip(kr["layers"], kr["per_round"][-1]):
        row[f"keep_{layer}"] = r
      row["_rounds"] = kr["per_round"]
      row["_layers"] = kr["layers"]
    rows.append(row)
  return rows


def write_csv(rows: list[dict], path: str) -> None:
  cols: list[str] = []
  for r in rows:
    for k in r:
      if not k.startswith("_") and k not in cols:
        cols.append(k)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
  w.writeheader()
  for r in rows:
    w.writerow({k: r.get(k, "") for k in cols})
  write_text_atomic(path, buf.getvalue())


def _groups(rows):
  """{(method, target): [test accuracies in %]} over finished runs."""
  out: dict[tuple, list[float]] = {}
  for r in rows:
    if r["status"] == "done" and r["method"] != "dense":
      out.setdefault((r["method"], r["target_sparsity"]), []).append(100 * r["test_accuracy"])
  return out


def summarize(values: Sequence[float]) -> dict:
  """n, mean, std (ddof 1), 95% t confidence interval (scipy)."""
  from scipy import stats

  x = np.asarray(values, np.float64)
  n = len(x)
  mean = float(np.mean(x)) if n else float("nan")
  std = float(np.std(x, ddof=1)) if n > 1 else float("nan")
  if n > 1 and std > 0:
    lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(x))
  else:
    lo = hi = mean if n == 1 or std == 0 else float("nan")
  return {"n": n, "mean": mean, "std": std, "ci_low": float(lo), "ci_high": float(hi)}


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
  """Welch's t-test of mean(a) - mean(b) (scipy.stats.ttest_ind, equal_var=False)."""
  from scipy import stats

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
  if len(a) < 2 or len(b) < 2:
    return {"diff": diff, "t": float("nan"), "p": float("nan")}
  if np.std(a) == 0 and np.std(b) == 0:
    return {"diff": diff, "t": float("nan"), "p": 0.0 if diff != 0 else 1.0}
  t, p = stats.ttest_ind(a, b, equal_var=False)
  return {"diff": diff, "t": float(t), "p": float(p)}


def _verdict(w: dict, alpha: float = 0.05) -> str:
  if math.isnan(w["p"]):
    return "n/a (needs >= 2 seeds each)"
  if w["p"] < alpha:
    return "ARSP wins" if w["diff"] > 0 else "ARSP loses"
  return "tie"


def _pct(x: float, digits: int = 2) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(p: float) -> str:
  if p is None or math.isnan(p):
    return "–"
  return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def build_report(rows: list[dict], meta: dict, reference: str = REFERENCE) -> str:
  from scipy import stats

  groups = _groups(rows)
  targets = sorted({t for (_, t) in groups if t > 0})
  labels = []
  for r in rows:
    if r["method"] not in labels and r["method"] != "dense":
      labels.append(r["method"])
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
  dense = [
    100 * r["test_accuracy"] for r in rows if r["method"] == "dense" and r["status"] == "done"
  ]
  if dense:
    s = summarize(dense)
    out.append(
      f"Dense start (shared by every method of a seed): {s['mean']:.2f} ± "
      f"{_pct(s['std'])} (n={s['n']})."
    )
  ctrl = groups.get(("control", 0.0), [])
  if ctrl:
    s = summarize(ctrl)
    out.append(
      f"Unpruned control (same phases and epochs, nothing pruned): {s['mean']:.2f} ± "
      f"{_pct(s['std'])} (n={s['n']})."
    )
  out.append("")

  # 1. Table per (method, sparsity)
  out += ["## Accuracy by method and target sparsity", ""]
  out.append("| method | " + " | ".join(f"{t:g}" for t in targets) + " |")
  out.append("| --- | " + " | ".join("---" for _ in targets) + " |")
  for lab in labels:
    if lab == "control":
      continue
    cells = []
    for t in targets:
      v = groups.get((lab, t))
      if not v:
        cells.append("–")
        continue
      s = summarize(v)
      cells.append(
        f"{s['mean']:.2f} ± {_pct(s['std'])} [{_pct(s['ci_low'])}, "
        f"{_pct(s['ci_high'])}] (n={s['n']})"
      )
    out.append(f"| {lab} | " + " | ".join(cells) + " |")
  out.append("")
  # Achieved sparsity and bits per weight
  out += [
    "## Achieved sparsity and storage (mean over seeds)",
    "",
    "| method | target | achieved sparsity | bits per weight | HyperScore | wall s |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for lab in labels:
    for t in [0.0] if lab == "control" else targets:
      rs = [
        r
        for r in rows
        if r["method"] == lab and r["target_sparsity"] == t and r["status"] == "done"
      ]
      if not rs:
        continue
      m = lambda k, rs=rs: float(np.nanmean([float(r[k]) for r in rs]))
      out.append(
        f"| {lab} | {t:g} | {m('sparsity'):.4f} | {m('bits_per_weight'):.3f} | "
        f"{m('hyperscore'):.1f} | {m('wall_seconds'):.0f} |"
      )
  out.append("")

  # 2. Welch tests of ARSP against each other method
  out += [
    f"## {reference} against every other method (Welch's t-test)",
    "",
    "| target | other method | " + reference + " mean | other mean | difference (pts) | "
    "p | verdict |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  verdicts = []
  for t in targets:
    a = groups.get((reference, t))
    if not a:
      continue
    for lab in labels:
      if lab in (reference, "control") or not groups.get((lab, t)):
        continue
      b = groups[(lab, t)]
      w = welch(a, b)
      v = _verdict(w)
      verdicts.append((t, lab, w, v))
      out.append(
        f"| {t:g} | {lab} | {np.mean(a):.2f} | {np.mean(b):.2f} | {w['diff']:+.2f} | "
        f"{_p(w['p'])} | {v} |"
      )
    if ctrl:
      w = welch(a, ctrl)
      out.append(
        f"| {t:g} | control (unpruned) | {np.mean(a):.2f} | {np.mean(ctrl):.2f} | "
        f"{w['diff']:+.2f} | {_p(w['p'])} | {'within 1 pt' if w['diff'] >= -1 else 'more than 1 pt below'} |"
      )
  out.append("")

  # 3. ANOVA across methods per sparsity
  out += [
    "## One-way ANOVA across methods (per target sparsity)",
    "",
    "| target | methods | F | p |",
    "| --- | --- | --- | --- |",
  ]
  for t in targets:
    gs = [(lab, groups[(lab, t)]) for lab in labels if len(groups.get((lab, t), [])) >= 2]
    if len(gs) >= 2:
      f, p = stats.f_oneway(*[g for _, g in gs])
      out.append(f"| {t:g} | {len(gs)} | {_pct(float(f))} | {_p(float(p))} |")
  out.append("")

  # 4. Regression of accuracy on per-layer keep ratios
  layer_cols = sorted({k for r in rows for k in r if k.startswith("keep_")})
  out += [
    "## Which layers tolerate pruning: accuracy regressed on each layer's keep ratio",
    "",
    "Runs at the same target sparsity whose per-layer keep ratios differ (the agent, "
    "global thresholds, random search); `scipy.stats.linregress` of test accuracy (%) on "
    "the layer's final keep ratio. A positive slope: keeping more of that layer helps.",
    "",
    "| target | layer | runs | slope (pts per unit keep ratio) | r | p |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for t in targets:
    rs = [
      r
      for r in rows
      if r["status"] == "done"
      and r["target_sparsity"] == t
      and r["method"] not in ("dense", "control")
    ]
    for col in layer_cols:
      pts = [(float(r[col]), 100 * r["test_accuracy"]) for r in rs if col in r]
      if len(pts) < 3:
        continue
      x, y = np.asarray(pts).T
      if np.ptp(x) < 1e-6:
        continue
      lr = stats.linregress(x, y)
      out.append(
        f"| {t:g} | {col[5:]} | {len(pts)} | {lr.slope:+.2f} | {lr.rvalue:+.2f} | {_p(lr.pvalue)} |"
      )
  out.append("")

  # 5. Plain statement
  out += ["## Where ARSP wins, ties or loses", ""]
  if not verdicts:
    out.append("No comparison available (ARSP or the other methods have no finished runs).")
  for t in targets:
    vs = [(lab, w, v) for (tt, lab, w, v) in verdicts if tt == t]
    if not vs:
      continue
    parts = [
      f"{v.split()[-1] if v.startswith('ARSP') else v} vs {lab} ({w['diff']:+.2f} pts, "
      f"p={_p(w['p'])})"
      for lab, w, v in vs
    ]
    out.append(f"- sparsity {t:g}: " + "; ".join(parts) + ".")
  out.append("")
  target_lines = _target_check(groups, ctrl, reference)
  if target_lines:
    out += ["## The issue's target", ""] + target_lines + [""]
  return "\n".join(out)


def _target_check(groups, ctrl, reference) -> list[str]:
  from arsp_jax.pruning import methods as methods_lib

  lines = []
  for t in (0.9, 0.95):
    a = groups.get((reference, t))
    base = [(lab, groups[(lab, t)]) for lab in methods_lib.BASELINES if groups.get((lab, t))]
    if not a or not base:
      continue
    best_lab, best = max(base, key=lambda kv: np.mean(kv[1]))
    w = welch(a, best)
    ok = w["diff"] >= 1.0 and not math.isnan(w["p"]) and w["p"] < 0.05
    lines.append(
      f"- {t:g}: {reference} {np.mean(a):.2f} vs best baseline {best_lab} "
      f"{np.mean(best):.2f}: {w['diff']:+.2f} pts (p={_p(w['p'])}) — target "
      f"(>= +1 pt, p < 0.05) {'MET' if ok else 'MISSED'}"
      + (
        ""
        if ok
        else f" by {max(0.0, 1.0 - w['diff']):.2f} pts"
        + (" and p >= 0.05" if not (w["p"] < 0.05) else "")
      )
      + "."
    )
  a = groups.get((reference, 0.9))
  if a and ctrl:
    d = float(np.mean(a) - np.mean(ctrl))
    lines.append(
      f"- 0.9 vs the unpruned control: {d:+.2f} pts — target (within 1 pt) "
      f"{'MET' if d >= -1.0 else f'MISSED by {-1.0 - d:.2f} pts'}."
    )
  return lines


def plot_pareto(rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  labels = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]
  for lab in labels:
    by_t: dict[float, list[dict]] = {}
    for r in rows:
      if r["method"] == lab and r["status"] == "done":
        by_t.setdefault(r["target_sparsity"], []).append(r)
    if not by_t:
      continue
    ts = sorted(by_t)
    for ax, key in zip(axes, ("sparsity", "bits_per_weight")):
      x = [np.mean([float(r[key]) for r in by_t[t]]) for t in ts]
      y = [np.mean([100 * r["test_accuracy"] for r in by_t[t]]) for t in ts]
      e = [
        np.std([100 * r["test_accuracy"] for r in by_t[t]], ddof=1) if len(by_t[t]) > 1 else 0.0
        for t in ts
      ]
      style = (
        dict(marker="*", markersize=12, linewidth=2.5)
        if lab == REFERENCE
        else dict(marker="o", markersize=5, linewidth=1.2)
      )
      if lab == "control":
        ax.axhline(y[0], color="gray", linestyle="--", linewidth=1, label="control (unpruned)")
        continue
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
  _save_fig(fig, path)
  plt.close(fig)


def plot_keep_ratios(rows: list[dict], path: str, reference: str = REFERENCE) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rs = [r for r in rows if r["method"] == reference and r["status"] == "done" and "_rounds" in r]
  ts = sorted({r["target_sparsity"] for r in rs}) or [None]
  fig, axes = plt.subplots(1, len(ts), figsize=(4 * len(ts), 3.6), squeeze=False)
  for ax, t in zip(axes[0], ts):
    group = [r for r in rs if r["target_sparsity"] == t]
    if not group:
      ax.set_title("no ARSP runs")
      continue
    for li, layer in enumerate(group[0]["_layers"]):
      for j, r in enumerate(group):
        ratios = np.asarray(r["_rounds"])[:, li]
        ax.plot(
          np.arange(1, len(ratios) + 1),
          ratios,
          color=f"C{li}",
          alpha=0.8,
          label=layer if j == 0 else None,
        )
    ax.set_title(f"target sparsity {t:g} ({len(group)} seeds)")
    ax.set_xlabel("pruning round")
    ax.set_ylabel("keep ratio")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("The agent's per-layer keep ratios over rounds (one line per seed)")
  fig.tight_layout()
  _save_fig(fig, path)
  plt.close(fig)


def _save_fig(fig, path: str) -> None:
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)


def write_study_files(
  workdir: str, specs: Sequence[RunSpec], meta: dict, log: Callable[[str], None] = print
) -> list[dict]:
  rows = collect(workdir, specs)
  write_csv(rows, os.path.join(workdir, "runs.csv"))
  write_text_atomic(os.path.join(workdir, "report.md"), build_report(rows, meta))
  plot_pareto(rows, os.path.join(workdir, "pareto.png"))
  plot_keep_ratios(rows, os.path.join(workdir, "keep_ratios.png"))
  log(
    f"wrote {workdir}/runs.csv, report.md, pareto.png, keep_ratios.png "
    f"({sum(r['status'] == 'done' for r in rows)} finished runs)"
  )
  return rows


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m arsp_jax.compare",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--workdir", required=True, help="Study directory (runs/, runs.csv, report.md).")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--model", default=None, help="Model (default: the dataset preset's).")
  p.add_argument(
    "--methods",
    default="arsp,random,magnitude,global_magnitude,taylor,gmp",
    help="Comma-separated pruning methods; method:score for a score variant.",
  )
  p.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
  p.add_argument("--seeds", default="3", help="A count (3 = seeds 0,1,2) or a list (0,4,7).")
  p.add_argument(
    "--control",
    default="true",
    choices=("true", "false"),
    help="Also train the unpruned control through the same phases.",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="Any config key for every run (repeatable).",
  )
  p.add_argument("--report_only", action="store_true", help="Only rewrite the study files.")
  p.add_argument("--max_runs", type=int, default=None, help="Stop after this many runs.")
  p.add_argument("--title", default=None)
  p.add_argument(
    "--machine",
    default=None,
    help="Machine description for the report (default: read from this machine; "
    "with --report_only, the one recorded when the runs were made).",
  )
  return p


def _seeds(text: str) -> list[int]:
  parts = [x for x in text.split(",") if x.strip()]
  if len(parts) == 1:
    n = int(parts[0])
    if n < 1:
      raise ValueError(f"--seeds must be a positive count or a list, got {text!r}")
    return list(range(n))
  return [int(x) for x in parts]


def _machine() -> str:
  import platform

  try:
    import jax

    dev = jax.devices()[0]
    accel = f"{jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}"
  except Exception:  # pragma: no cover - reporting only
    accel = "?"
  return f"{platform.node()}: {os.cpu_count()} CPU cores, {accel}, jax {_version('jax')}"


def _version(mod: str) -> str:
  try:
    return __import__(mod).__version__
  except Exception:  # pragma: no cover
    return "?"


def main(argv: Sequence[str] | None = None) -> int:
  from arsp_jax import configs as config_lib
  from arsp_jax.export import summary as report

  args = _parser().parse_args(argv)
  try:
    seeds = _seeds(args.seeds)
    sparsities = [float(x) for x in args.sparsities.split(",") if x.strip()]
    for sp in sparsities:
      if not 0.0 < sp < 1.0:
        raise ValueError(f"--sparsities: {sp} is outside (0, 1)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    specs = plan_grid(methods, sparsities, seeds, control=args.control == "true")
    base = config_lib.get_config(args.dataset)
    over: dict[str, Any] = {}
    if args.model:
      over["model"] = args.model
    if args.data_dir:
      over["data_dir"] = args.data_dir
    over.update(config_lib.parse_sets(args.set))
    base = config_lib.apply_overrides(base, over)
    config_lib.validate(base)
    from arsp_jax import models

    models.get_model(base.model, 10, **dict(base.model_kwargs))  # unknown model / options
    for spec in specs:
      if spec.overrides:
        config_lib.validate(run_config(base, spec, "/nonexistent"))
    for sc in {s.score for s in specs if s.score}:
      if sc not in config_lib.SCORES:
        raise config_lib.ConfigError(
          f"--methods: unknown score {sc!r} (choose from {', '.join(config_lib.SCORES)})."
        )
  except (ValueError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  wd = os.path.abspath(args.workdir)
  os.makedirs(wd, exist_ok=True)
  # The study's base configuration: a different one in the same workdir is refused (runs of
  # two configurations would be mixed in one report). Keys added to the code after the study
  # started (absent from its record) are not differences.
  study_path = os.path.join(wd, "study.json")
  base_dict = json.loads(json.dumps(base.to_dict()))
  old: dict = {}
  if os.path.exists(study_path):
    with open(study_path) as f:
      old = json.load(f)
    from arsp_jax.train import loop

    diff = loop._config_diff(old.get("base_config", {}), base_dict, common_only=True)
    if diff and not args.report_only:
      print(
        f"error: {wd} holds a study with another base configuration "
        f"({'; '.join(diff[:5])}). Use a new --workdir.",
        file=sys.stderr,
      )
      return 2
  argv_list = list(sys.argv[1:] if argv is None else argv)
  # The command that runs the grid (a --report_only rerun reports the grid's command).
  command = "python -m arsp_jax.compare " + " ".join(a for a in argv_list if a != "--report_only")
  machine = args.machine
  if machine is None and args.report_only:
    machine = old.get("meta", {}).get("machine")
  meta = {
    "title": args.title or f"{args.dataset} / {base.model}",
    "command": command,
    "machine": machine or _machine(),
  }
  if not args.report_only:
    report.write_json_atomic(
      study_path,
      {"base_config": base_dict, "meta": meta, "runs": [dataclasses.asdict(s) for s in specs]},
    )
  if not args.report_only:
    try:
      counts = run_grid(base, specs, wd, max_runs=args.max_runs)
    except KeyboardInterrupt:
      print(
        "interrupted: rerun the same command to continue the study (finished runs are "
        "kept, the interrupted one resumes from its last checkpoint).",
        file=sys.stderr,
      )
      return 130
    print(f"ran {counts['ran']}, already done {counts['skipped']}, failed {counts['failed']}")
  write_study_files(wd, specs, meta)
  return 0


if __name__ == "__main__":
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  sys.exit(main())
