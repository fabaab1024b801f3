"""Paired statistics for studies whose methods share a dense start per seed.

Every method of a seed starts from the same dense run, so a comparison of two methods is a set
of per-seed differences: its mean, a 95% percentile-bootstrap CI of that mean (seeds resampled
with replacement, ``scipy.stats.bootstrap``), and a paired t-test (``scipy.stats.ttest_rel``).
When a reference is compared with several methods in one cell, the p-values are adjusted by
Holm's step-down procedure, and the verdict words come from the adjusted p alone.

The frontier: the density a method needs to reach an accuracy, interpolated linearly in
log10(density) between measured sparsities, and the ratio of two methods' densities with a
bootstrap CI over seeds (resampled jointly for both methods).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
RESAMPLES = 10_000
BOOT_SEED = 0


def by_seed(rows: Sequence[dict], label: str, target: float, key: str = "test_accuracy") -> dict:
  """{seed: 100 * key} over the finished runs of ``label`` at ``target``."""
  return {
    int(r["seed"]): 100.0 * float(r[key])
    for r in rows
    if r.get("status") == "done"
    and r["method"] == label
    and abs(float(r["target_sparsity"]) - target) < 1e-9
    and key in r
  }


def differences(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
  """{seed: a - b} over the seeds both have."""
  return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def bootstrap_ci(
  values: Sequence[float],
  statistic: Callable = np.mean,
  resamples: int = RESAMPLES,
  seed: int = BOOT_SEED,
) -> tuple[float, float]:
  """95% percentile bootstrap CI of ``statistic`` (resampling ``values`` with replacement);
  (nan, nan) with fewer than 2 values, (v, v) when all are equal."""
  x = np.asarray(values, np.float64)
  if len(x) < 2:
    return (math.nan, math.nan)
  if np.ptp(x) == 0:
    v = float(statistic(x))
    return (v, v)
  res = stats.bootstrap(
    (x,),
    statistic,
    n_resamples=resamples,
    confidence_level=0.95,
    method="percentile",
    random_state=np.random.default_rng(seed),
  )
  return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired(diffs: Mapping[int, float] | Sequence[float], resamples: int = RESAMPLES) -> dict:
  """n, mean difference, its bootstrap CI, and the paired t-test's t and two-sided p (the
  one-sample t-test of the differences against 0, which is ``ttest_rel``)."""
  d = np.asarray(list(diffs.values()) if isinstance(diffs, Mapping) else diffs, np.float64)
  n = len(d)
  out = {"n": n, "mean": float(d.mean()) if n else math.nan, "t": math.nan, "p": math.nan}
  out["ci_low"], out["ci_high"] = bootstrap_ci(d, resamples=resamples)
  if n >= 2:
    if np.ptp(d) == 0:
      out["p"] = 1.0 if d[0] == 0 else 0.0
    else:
      res = stats.ttest_rel(d, np.zeros_like(d))
      out["t"], out["p"] = float(res.statistic), float(res.pvalue)
  return out


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the input order. With m finite p-values sorted
  ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)); nan stays nan and does not
  count in m."""
  p = np.asarray(pvalues, np.float64)
  ok = np.flatnonzero(~np.isnan(p))
  adj = np.full(len(p), math.nan)
  m = len(ok)
  order = ok[np.argsort(p[ok], kind="stable")]
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[i]))
    adj[i] = running
  return [float(x) for x in adj]


def verdict(mean: float, p_adjusted: float, alpha: float = ALPHA) -> str:
  """``wins`` / ``loses`` when the adjusted p < alpha (by the sign of the mean difference),
  ``tie`` otherwise, ``n/a`` without a test."""
  if math.isnan(p_adjusted):
    return "n/a"
  if p_adjusted < alpha:
    return "wins" if mean > 0 else "loses"
  return "tie"


def compare(
  rows: Sequence[dict],
  reference: str,
  others: Sequence[str],
  target: float,
  alpha: float = ALPHA,
  resamples: int = RESAMPLES,
) -> list[dict]:
  """The reference against each of ``others`` in one cell: paired differences (reference −
  other, in points), CI, p, Holm-adjusted p over the comparisons that have a test, verdict."""
  ref = by_seed(rows, reference, target)
  out = []
  for other in others:
    res = paired(differences(ref, by_seed(rows, other, target)), resamples)
    out.append({"other": other, **res})
  for c, adj in zip(out, holm([c["p"] for c in out])):
    c["p_holm"] = adj
    c["verdict"] = verdict(c["mean"], adj, alpha)
  return out


# ----------------------------------------------------------------------------------------------
# The frontier
# ----------------------------------------------------------------------------------------------


def density_at(curve: Mapping[float, float], accuracy: float) -> float:
  """The density at which a method reaches ``accuracy`` (points), from its mean accuracy at
  measured densities {density: accuracy}: the lowest density where the piecewise-linear curve
  in log10(density) crosses ``accuracy`` from above, scanning from the densest point down;
  nan when the curve never reaches it. Where every point is above, the sparsest point's
  density (the frontier lies beyond what was measured: a bound, flagged by the caller)."""
  pts = sorted(curve.items(), reverse=True)  # densest first
  if not pts or max(a for _, a in pts) < accuracy:
    return math.nan
  for (d0, a0), (d1, a1) in zip(pts, pts[1:]):
    if a0 >= accuracy > a1:
      x0, x1 = math.log10(d0), math.log10(d1)
      frac = (a0 - accuracy) / (a0 - a1)
      return 10 ** (x0 + frac * (x1 - x0))
  # Never drops below: the sparsest point still reaches it.
  if pts[-1][1] >= accuracy:
    return pts[-1][0]
  return math.nan


def mean_curve(rows: Sequence[dict], label: str, targets: Sequence[float], seeds=None) -> dict:
  """{density: mean accuracy (points)} of ``label`` over ``seeds`` (all when None; a resample
  may repeat a seed), at the targets where every requested seed has a run."""
  out = {}
  for t in targets:
    acc = by_seed(rows, label, t)
    use = list(acc) if seeds is None else list(seeds)
    if use and all(s in acc for s in use):
      out[1.0 - t] = float(np.mean([acc[s] for s in use]))
  return out


def anchor(rows: Sequence[dict], seeds=None) -> float:
  """The mean dense-start test accuracy (points) over ``seeds`` (every dense run when None)."""
  dense = {int(r["seed"]): 100.0 * float(r["test_accuracy"]) for r in rows if r["method"] == "dense"
           and r.get("status") == "done"}  # fmt: skip
  use = list(dense) if seeds is None else [s for s in seeds if s in dense]
  return float(np.mean([dense[s] for s in use])) if use else math.nan


def compression_ratio(
  rows: Sequence[dict],
  reference: str,
  other: str,
  targets: Sequence[float],
  drop: float,
  resamples: int = 2000,
  seed: int = BOOT_SEED,
  seeds: Sequence[int] | None = None,
) -> dict:
  """density(other) / density(reference) at accuracy = anchor − ``drop``; with a 95% percentile
  bootstrap CI (seeds resampled jointly; the anchor recomputed per resample). ``ratio`` > 1:
  the other method keeps more connections.

  Over the seeds both methods have at every target; or, given ``seeds`` (a study's seeds),
  each method's curve over those seeds at the targets where it has every one of them
  (``missing``: {method: targets left out}, while a study is being run). ``reference_bound`` /
  ``other_bound``: that method is still above the accuracy at its sparsest point used, so its
  density is an upper bound and the ratio a bound (no CI is drawn for a bound)."""
  use_t = {reference: list(targets), other: list(targets)}
  if seeds is None:
    have = [set(by_seed(rows, m, t)) for m in (reference, other) for t in targets]
    seeds = sorted(set.intersection(*have)) if have else []
  else:
    seeds = sorted(seeds)
    for m in use_t:
      use_t[m] = [t for t in targets if set(seeds) <= set(by_seed(rows, m, t))]
    seeds = seeds if all(use_t.values()) else []
  missing = {m: [t for t in targets if t not in use_t[m]] for m in use_t}
  out = {"seeds": len(seeds), "missing": {m: v for m, v in missing.items() if v},
         "points": min(len(v) for v in use_t.values()), "ratio": math.nan, "ci_low": math.nan,
         "ci_high": math.nan, "reference_bound": False, "other_bound": False}  # fmt: skip
  if not seeds:
    return out

  # Accuracy tables [sparsity, seed] read by every resample (a resample: seed positions).
  tab = {m: np.array([[v[s] for s in seeds] for v in (by_seed(rows, m, t) for t in use_t[m])])
         for m in use_t}  # fmt: skip
  dense = {int(r["seed"]): 100.0 * float(r["test_accuracy"]) for r in rows
           if r["method"] == "dense" and r.get("status") == "done"}  # fmt: skip
  dense = np.array([dense.get(s, np.nan) for s in seeds])

  def ratios(idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """(ratio, density_reference, density_other) of each row of seed positions ``idx``."""
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a dense start: nan
      acc = np.nanmean(dense[idx], axis=1) - drop
    means = {m: tab[m][:, idx].mean(axis=2) for m in tab}  # [sparsity, resample]
    d = {m: np.array([density_at({1.0 - t: x for t, x in zip(use_t[m], col)}, a)
                      for col, a in zip(means[m].T, acc)]) for m in tab}  # fmt: skip
    return d[other] / d[reference], d[reference], d[other]

  whole = np.arange(len(seeds))[None]
  out["ratio"], out["density_reference"], out["density_other"] = (
    float(x[0]) for x in ratios(whole))  # fmt: skip
  a = anchor(rows, seeds) - drop
  for m, key in ((reference, "reference_bound"), (other, "other_bound")):
    out[key] = bool(use_t[m]) and float(tab[m].mean(axis=1).min()) >= a  # above it at its end
  if len(seeds) >= 2 and not (out["reference_bound"] or out["other_bound"]):
    rng = np.random.default_rng(seed)
    n = len(seeds)
    draws = ratios(np.array([rng.choice(n, n) for _ in range(resamples)]))[0]
    if np.isfinite(draws).mean() >= 0.95:  # the CI needs the ratio in almost every resample
      lo, hi = np.nanpercentile(draws, [2.5, 97.5])
      out["ci_low"], out["ci_high"] = float(lo), float(hi)
  return out


# ----------------------------------------------------------------------------------------------
# Effects of a 2 x 2 design and the headroom
# ----------------------------------------------------------------------------------------------


def factorial(rows: Sequence[dict], cells: Mapping[str, str], target: float) -> dict | None:
  """Per-seed main effects and interaction of a 2 × 2 {a0, a1} × {b0, b1}; ``cells`` maps
  "a0,b0", "a0,b1", "a1,b0", "a1,b1" to method labels. Effects in points, each with its
  bootstrap CI and paired p: ``a`` = mean over b of (a1 − a0), ``b`` likewise, ``interaction``
  = (a1b1 − a1b0) − (a0b1 − a0b0). None without a seed that has all four runs."""
  acc = {k: by_seed(rows, v, target) for k, v in cells.items()}
  keys = sorted(cells)
  if len(keys) != 4:
    raise ValueError(f"a 2 x 2 needs four cells, got {keys}")
  (a0b0, a0b1, a1b0, a1b1) = keys
  seeds = sorted(set.intersection(*[set(v) for v in acc.values()]))
  if not seeds:
    return None

  def per_seed(fn):
    return {s: fn(*(acc[k][s] for k in keys)) for s in seeds}

  return {
    "seeds": len(seeds),
    "a": paired(per_seed(lambda w, x, y, z: ((y - w) + (z - x)) / 2)),
    "b": paired(per_seed(lambda w, x, y, z: ((x - w) + (z - y)) / 2)),
    "interaction": paired(per_seed(lambda w, x, y, z: (z - y) - (x - w))),
  }


def headroom(
  rows: Sequence[dict],
  allocations: Sequence[str],
  rules: Sequence[str],
  target: float,
  resamples: int = 2000,
  seed: int = BOOT_SEED,
  min_allocations: int = 2,
  seeds: Sequence[int] | None = None,
) -> dict | None:
  """How much a per-layer allocation can matter at ``target``, from fixed random allocations and
  the rules on the same two (or more) seeds. ``naive``: best allocation mean − best rule mean
  (biased upwards: a maximum over many noisy means). ``cross_validated``: for each ordered pair
  of seeds (a, b), the allocation and the rule that were best on seed a, compared on seed b;
  the mean over pairs; its 95% CI resamples the allocations with replacement. None without two
  seeds that every rule and at least ``min_allocations`` (and two) allocations share.
  ``seeds``: only these (the headroom arm's); without them, the seeds every rule has and enough
  allocations have too, so that more seeds of the rules (another arm's) change nothing."""
  if seeds is not None:
    rows = [r for r in rows if int(r["seed"]) in set(seeds)]
  need = max(2, min_allocations)
  rule_acc = {r: by_seed(rows, r, target) for r in rules}
  alloc_acc = {a: by_seed(rows, a, target) for a in allocations}
  rule_acc = {k: v for k, v in rule_acc.items() if v}
  common = set.intersection(*[set(v) for v in rule_acc.values()]) if rule_acc else set()
  seeds = sorted(s for s in common if sum(s in v for v in alloc_acc.values()) >= need)
  alloc_acc = {k: v for k, v in alloc_acc.items() if all(s in v for s in seeds)}
  if len(seeds) < 2 or len(alloc_acc) < need:
    return None
  names = sorted(alloc_acc)
  A = np.array([[alloc_acc[a][s] for s in seeds] for a in names])  # [allocations, seeds]
  R = np.array([[rule_acc[r][s] for s in seeds] for r in sorted(rule_acc)])

  def cv(a_mat: np.ndarray) -> float:
    vals = []
    for i in range(len(seeds)):
      for j in range(len(seeds)):
        if i != j:
          vals.append(a_mat[np.argmax(a_mat[:, i]), j] - R[np.argmax(R[:, i]), j])
    return float(np.mean(vals))

  rng = np.random.default_rng(seed)
  draws = np.array([cv(A[rng.integers(0, len(A), len(A))]) for _ in range(resamples)])
  best_rule = sorted(rule_acc)[int(np.argmax(R.mean(1)))]
  best_alloc = names[int(np.argmax(A.mean(1)))]
  return {
    "target": target,
    "seeds": len(seeds),
    "allocations": len(names),
    "best_rule": best_rule,
    "best_rule_mean": float(R.mean(1).max()),
    "best_allocation": best_alloc,
    "best_allocation_mean": float(A.mean(1).max()),
    "naive": float(A.mean(1).max() - R.mean(1).max()),
    "median_allocation_minus_best_rule": float(np.median(A.mean(1)) - R.mean(1).max()),
    "beat_best_rule": int((A.mean(1) > R.mean(1).max()).sum()),
    "cross_validated": cv(A),
    "ci_low": float(np.percentile(draws, 2.5)),
    "ci_high": float(np.percentile(draws, 97.5)),
  }
