"""The study's statistics, all from scipy: summaries with t confidence intervals, Welch's
t-test, one-way ANOVA and the keep-ratio regression (within one method)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
# The keep-ratio regression needs this many runs of one method at one target sparsity.
MIN_REGRESSION_RUNS = 5


def groups(rows: Sequence[dict]) -> dict[tuple[str, float], list[float]]:
  """{(method, target sparsity): [test accuracies in %]} over finished runs (dense excluded)."""
  out: dict[tuple, list[float]] = {}
  for r in rows:
    if r["status"] == "done" and r["method"] != "dense":
      out.setdefault((r["method"], r["target_sparsity"]), []).append(100 * r["test_accuracy"])
  return out


def method_labels(rows: Sequence[dict]) -> list[str]:
  """The methods of the rows in order of first appearance (dense excluded)."""
  return [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]


def targets(grp: dict) -> list[float]:
  """The target sparsities (> 0) that have runs, ascending."""
  return sorted({t for (_, t) in grp if t > 0})


def summarize(values: Sequence[float]) -> dict:
  """n, mean, std (ddof 1), 95% t confidence interval (scipy)."""
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
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
  if len(a) < 2 or len(b) < 2:
    return {"diff": diff, "t": float("nan"), "p": float("nan")}
  if np.std(a) == 0 and np.std(b) == 0:
    return {"diff": diff, "t": float("nan"), "p": 0.0 if diff != 0 else 1.0}
  t, p = stats.ttest_ind(a, b, equal_var=False)
  return {"diff": diff, "t": float(t), "p": float(p)}


def verdict(w: dict, alpha: float = ALPHA) -> str:
  """``wins`` / ``loses`` (p < alpha, by the sign of the difference), ``tie``, or ``n/a``."""
  if math.isnan(w["p"]):
    return "n/a"
  if w["p"] < alpha:
    return "wins" if w["diff"] > 0 else "loses"
  return "tie"


def anova(grp: dict, labels: Sequence[str], target: float) -> dict | None:
  """One-way ANOVA (scipy.stats.f_oneway) across the methods with >= 2 runs at ``target``;
  None when fewer than two such methods."""
  gs = [grp[(lab, target)] for lab in labels if len(grp.get((lab, target), [])) >= 2]
  if len(gs) < 2:
    return None
  f, p = stats.f_oneway(*gs)
  return {"methods": len(gs), "F": float(f), "p": float(p)}


def keep_ratio_regressions(
  rows: Sequence[dict], method: str, target: float, min_runs: int = MIN_REGRESSION_RUNS
) -> list[dict]:
  """Test accuracy (%) regressed on each layer's final keep ratio (scipy.stats.linregress)
  over the runs of ONE method at one target sparsity. Runs of different methods are never
  pooled: across methods the keep ratio is confounded with everything else a method does.
  Empty when the method has fewer than ``min_runs`` runs or its keep ratios do not vary."""
  rs = [
    r
    for r in rows
    if r["status"] == "done" and r["method"] == method and r["target_sparsity"] == target
  ]
  out = []
  for col in sorted({k for r in rs for k in r if k.startswith("keep_")}):
    pts = [(float(r[col]), 100 * r["test_accuracy"]) for r in rs if col in r]
    if len(pts) < min_runs:
      continue
    x, y = np.asarray(pts).T
    if np.ptp(x) < 1e-6:
      continue
    lr = stats.linregress(x, y)
    out.append(
      {"layer": col[5:], "runs": len(pts), "slope": lr.slope, "r": lr.rvalue, "p": lr.pvalue}
    )
  return out


def best_of(grp: dict, labels: Sequence[str], target: float) -> tuple[str, list[float]] | None:
  """The method among ``labels`` with the highest mean accuracy at ``target``."""
  cands = [(lab, grp[(lab, target)]) for lab in labels if grp.get((lab, target))]
  if not cands:
    return None
  return max(cands, key=lambda kv: np.mean(kv[1]))
