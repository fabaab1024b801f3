"""RESULTS.md and README's generated blocks against the committed data under results/."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sp

from arsp_jax.study import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = ("deep_mlp", "fmnist_mlp", "fmnist_cnn", "cpu_short_mlp")


def test_committed_results_md_and_readme_match_the_data():
  """A hand edit of RESULTS.md or of README's generated blocks, or data changed without
  regenerating, fails here."""
  proc = subprocess.run(
    [sys.executable, "-m", "arsp_jax.study.results", "--check"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode == 0, proc.stderr


def _results_md():
  with open(os.path.join(ROOT, "RESULTS.md")) as f:
    return f.read()


@pytest.mark.parametrize("study", STUDIES)
def test_archive_paired_figures_match_a_recomputation(study):
  """The archive's paired comparisons, recomputed here from runs.csv with plain numpy/scipy
  (not the generator's code): every (sparsity, method) row of RESULTS.md gives the same mean
  paired difference and paired p, and the archive has no verdict words."""
  text = _results_md()
  section = text[text.index(f"(`results/{study}/`)") :]
  section = section[: section.find("\n### ", 1)]
  with open(os.path.join(ROOT, "results", "index.json")) as f:
    entry = next((e for e in json.load(f)["studies"] if e["dir"] == study), {})
  ref = entry.get("reference", "arsp")
  acc = {}
  with open(os.path.join(ROOT, "results", study, "runs.csv")) as f:
    for r in csv.DictReader(f):
      if r["status"] == "done":
        key = (r["method"], float(r["target_sparsity"]))
        acc.setdefault(key, {})[int(r["seed"])] = 100 * float(r["test_accuracy"])
  checked = 0
  for (m, t), by_seed in acc.items():
    if m in (ref, "control", "dense") or (ref, t) not in acc:
      continue
    seeds = sorted(set(by_seed) & set(acc[(ref, t)]))
    if len(seeds) < 2:
      continue
    d = np.array([acc[(ref, t)][s] - by_seed[s] for s in seeds])
    p = sp.ttest_rel(d, np.zeros_like(d)).pvalue if np.ptp(d) > 0 else float(d[0] == 0)
    p_text = f"{p:.2g}" if p >= 1e-4 else "<1e-4"
    row = f"| {t:g} | {m} | {len(seeds)} | {d.mean():+.2f} ["
    line = next(ln for ln in section.splitlines() if ln.startswith(row))
    assert line.split(" | ")[4].strip() == p_text, line
    checked += 1
  assert checked >= 5
  assert not re.search(r"\b(wins|loses|ties?)\b", section)


def test_summary_rests_only_on_protocol_studies():
  text = _results_md()
  summary = text[text.index("## Summary") : text.index("## Setup")]
  for study in STUDIES:
    assert f"results/{study}/" not in summary


def test_keep_ratio_regression_is_within_one_method():
  rng = np.random.default_rng(0)
  rows = []
  for method, n in (("arsp", 6), ("gmp", 6)):
    for i in range(n):
      keep = float(rng.uniform(0.05, 0.2))
      acc = 0.8 + (0.5 if method == "gmp" else -0.3) * keep + float(rng.normal(0, 0.003))
      rows.append(
        {
          "method": method,
          "target_sparsity": 0.9,
          "status": "done",
          "test_accuracy": acc,
          "keep_fc1": keep,
          "seed": i,
        }
      )
  got = stats.keep_ratio_regressions(rows, "arsp", 0.9)
  x = [r["keep_fc1"] for r in rows if r["method"] == "arsp"]
  y = [100 * r["test_accuracy"] for r in rows if r["method"] == "arsp"]
  want = sp.linregress(x, y)
  assert len(got) == 1 and got[0]["runs"] == 6
  assert got[0]["slope"] == pytest.approx(want.slope) and got[0]["p"] == pytest.approx(want.pvalue)
  assert got[0]["slope"] < 0  # gmp's positive slope is not mixed in
  assert stats.keep_ratio_regressions(rows[:4], "arsp", 0.9) == []  # fewer than 5 runs


def test_search_columns_come_from_the_rounds_at_the_final_budget():
  """The per-run columns come from the rounds at the final budget only."""
  from arsp_jax.study import grid

  def rnd(before, after, best, mean):
    return {"density_before": before, "density_after": after,
            "controller": {"candidate_reward_max": best, "candidate_reward_mean": mean}}  # fmt: skip

  res = {"history": {"rounds": [rnd(1.0, 0.5, 0.99, 0.99), rnd(0.5, 0.1, 0.5, 0.4),
                                rnd(0.1, 0.1, 0.8, 0.6), rnd(0.1, 0.1, 0.9, 0.7)]}}  # fmt: skip
  cols = grid._search_columns(res)
  assert cols["final_rounds"] == 2
  assert cols["final_best_reward"] == pytest.approx(0.85)
  assert cols["final_mean_reward"] == pytest.approx(0.65)
  assert grid._search_columns({"history": {"rounds": [{"density_before": 1.0}]}}) == {}


def test_p1_overhead_verdict_reads_the_runs_and_pools_them(tmp_path):
  """The P = 1 target's verdict (README's training-cost block) comes from each run's median
  of per-repeat ratios, and the pooled line says when a run disagrees with the pooled median."""
  from arsp_jax.study import benchlines

  def run(name, dense, arsp):
    d = {
      "benchmark": "train_step",
      "settings": {"population": 1, "batch_size": 256, "prune_every": 50},
      "devices": 1,
      "platform": "cpu",
      "dense_ms_all_repeats": dense,
      "arsp_ms_all_repeats": arsp,
      "arsp_overhead": float(np.median(np.asarray(arsp) / np.asarray(dense)) - 1.0),
    }
    with open(tmp_path / name, "w") as f:
      json.dump(d, f)
    return d

  fast = run("a.json", [10.0, 10.0, 10.0], [10.5, 10.3, 10.9])  # +3% .. +9%
  slow = run("b.json", [10.0, 10.0, 10.0], [11.2, 11.4, 11.6])  # +12% .. +16%
  assert "**met** in this run" in benchlines.p1_goal(fast)
  assert "+3% to +9%" in benchlines.p1_goal(fast)
  assert "**missed** in this run" in benchlines.p1_goal(slow)
  assert benchlines.p1_goal({**fast, "settings": {"population": 16}}) == ""  # not a P = 1 run
  (line,) = benchlines.p1_pooled_line(str(tmp_path))
  assert "the 2 runs above pooled (6 per-repeat ratios)" in line
  assert "median +10.5%" in line and "missed by the pooled median" in line
  assert line.endswith(", but not by every run.")
  # Files timed one pruning interval at a time say so, in the verdict and the pooled line.
  for name in ("a.json", "b.json"):
    with open(tmp_path / name) as f:
      d = json.load(f)
    with open(tmp_path / name, "w") as f:
      json.dump({**d, "timing_unit": "interval"}, f)
  assert "Per-interval overheads +3% to +9%" in benchlines.p1_goal(
    {**fast, "timing_unit": "interval"}
  )
  (line,) = benchlines.p1_pooled_line(str(tmp_path))
  assert "(6 per-interval ratios)" in line
