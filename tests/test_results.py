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
def test_results_md_agrees_with_each_studys_report(study):
  """The harness's report.md (written when the runs finished) and RESULTS.md (recomputed from
  runs.csv) give the same ANOVA and Welch figures: the disagreements issue 11 found (an ANOVA
  p of 0.01 against 0.039, ...) cannot come back."""
  text = _results_md()
  with open(os.path.join(ROOT, "results", study, "report.md")) as f:
    report = f.read()
  anova = re.findall(r"^\| ([\d.]+) \| (\d+) \| ([\d.]+) \| ([^|]+) \|$", report, re.M)
  assert anova
  for t, n, f_stat, p in anova:
    p = p.strip()
    p_text = f"p < {p[1:]}" if p.startswith("<") else f"p = {p}"
    assert f"{t}: F = {f_stat}, {p_text} ({n} methods)" in text
  section = text[text.index(f"`results/{study}/`") :]
  section = section[: section.find("\n## ")]
  lines = section.splitlines()
  start = next(i for i, ln in enumerate(lines) if "Δ (p) at" in ln)
  table = []
  for ln in lines[start:]:
    if not ln.startswith("|"):
      break
    table.append(ln)
  header = table[0]
  cols = [c.strip() for c in header.strip("|").split("|")]
  cells = {ln.strip("|").split("|")[0].strip(): ln.strip("|").split("|") for ln in table}
  welch = re.findall(
    r"^\| ([\d.]+) \| ([^|(]+?) \| [\d.]+ \| [\d.]+ \| ([-+][\d.]+) \| ([^|]+) \|", report, re.M
  )
  with open(os.path.join(ROOT, "results", "index.json")) as f:
    entry = next((e for e in json.load(f)["studies"] if e["dir"] == study), {})
  if entry.get("reference", "arsp") != "arsp":
    # report.md compares every method with `arsp`; this study's RESULTS.md section with its own
    # reference row: recompute that row's Welch tests from runs.csv.
    from arsp_jax.study import grid  # noqa: PLC0415
    from arsp_jax.study import report as report_lib
    from arsp_jax.study import stats as stats_lib  # noqa: PLC0415

    grp = stats_lib.groups(grid.read_csv(os.path.join(ROOT, "results", study, "runs.csv")))
    ref = entry["reference"]
    welch = [
      (f"{t:g}", m, f"{w['diff']:+.2f}", report_lib.fmt_p(w["p"]))
      for (m, t), v in grp.items()
      if m != ref and (ref, t) in grp
      for w in [stats_lib.welch(grp[(ref, t)], v)]
    ]
  checked = 0
  for t, other, diff, p in welch:
    if f"Δ (p) at {t}" in cols:
      assert cells[other][cols.index(f"Δ (p) at {t}")].strip() == f"{diff} ({p.strip()})"
      checked += 1
  assert checked >= 5


def test_bits_per_weight_range_is_the_csvs():
  text = _results_md()
  path = os.path.join(ROOT, "results", "fmnist_mlp", "runs.csv")
  with open(path) as f:
    rows = [r for r in csv.DictReader(f) if r["status"] == "done"]
  means = {}
  for r in rows:
    if float(r["target_sparsity"]) == 0.9:
      means.setdefault(r["method"], []).append(float(r["bits_per_weight"]))
  m = [np.mean(v) for v in means.values()]
  assert f"0.9: {min(m):.3f}–{max(m):.3f}" in text


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


def test_factorial_ablation_table_and_effects():
  """The 2 x 2 {uniform, agent} x {top-k, sampled}: cells from the four methods' runs and each
  factor's main effect; no table unless all four cells have runs."""
  from arsp_jax.study import sections

  acc = {"gmp": [80.0, 82.0], "arsp_fixed": [81.0, 81.0], "arsp_topk": [84.0, 84.0],
         "arsp": [85.0, 87.0]}  # fmt: skip
  groups = {(m, 0.9): v for m, v in acc.items()}
  text = "\n".join(sections.factorial_lines({"groups": groups}))
  assert "| 0.9 | uniform | 81.00 (`gmp`) | 81.00 (`arsp_fixed`) |" in text
  assert "| 0.9 | agent | 84.00 (`arsp_topk`) | 86.00 (`arsp`) |" in text
  # agent: (84 + 86)/2 - (81 + 81)/2 = +4; sampling: (81 + 86)/2 - (81 + 84)/2 = +1
  assert "the agent over uniform: +4.00 pts | sampling over top-k: +1.00 pts" in text
  summary = sections.ablation_summary({"groups": groups})
  assert summary.startswith("at 0.9, the agent's ratios over uniform ones +4.00 pts and "
                            "reservoir sampling over top-k +1.00 pts")  # fmt: skip
  assert "random search" not in summary  # no arsp_random_search runs
  groups[("arsp_random_search", 0.9)] = [86.0, 86.5]
  assert "`arsp` vs random search at equal evaluations -0.25 pts" in sections.ablation_summary(
    {"groups": groups}
  )
  del groups[("arsp_topk", 0.9)]
  assert sections.factorial_lines({"groups": groups}) == []
  assert sections.ablation_summary({"groups": groups}) == ""


def test_granularity_table_compares_each_variant_with_weight_granularity():
  """weight vs word vs channel: the sparsity each reached, accuracy, Welch p against the
  weight-granularity method, bits per weight; nothing without the base method's runs."""
  from arsp_jax.study import sections

  def runs(label, accs, sparsity, bits):
    return [
      {"method": label, "status": "done", "target_sparsity": 0.9, "test_accuracy": a / 100,
       "sparsity": sparsity, "bits_per_weight": bits}
      for a in accs
    ]  # fmt: skip

  word = "gmp@arsp.granularity=word"
  rows = runs("gmp", [88.0, 88.2, 88.4], 0.9, 0.577) + runs(word, [87.0, 87.4, 87.2], 0.89, 0.133)
  groups = {("gmp", 0.9): [88.0, 88.2, 88.4], (word, 0.9): [87.0, 87.4, 87.2]}
  text = "\n".join(sections.granularity_lines({"rows": rows, "groups": groups}))
  p = sp.ttest_ind([87.0, 87.4, 87.2], [88.0, 88.2, 88.4], equal_var=False).pvalue
  assert "| 0.9 | gmp | weight | 0.9000 | 88.20 ± 0.20 | – | 0.577 |" in text
  assert f"| 0.9 | gmp | word | 0.8900 | 87.20 ± 0.20 | -1.00 ({p:.2g})" in text
  assert text.rstrip().endswith("| 0.133 |")
  only_word = {"rows": rows[3:], "groups": {(word, 0.9): groups[(word, 0.9)]}}
  assert sections.granularity_lines(only_word) == []


def test_search_columns_and_the_agent_against_random_search():
  """The per-run columns come from the rounds at the final budget only; the table compares the
  agent with random search per target, and is absent unless both have such runs."""
  from arsp_jax.study import grid, sections

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

  def row(m, best, acc):
    return {"method": m, "target_sparsity": 0.9, "final_rounds": 8.0, "final_best_reward": best,
            "final_mean_reward": best - 0.01, "test_accuracy": acc}  # fmt: skip

  rows = [row("arsp", 0.87, 0.88), row("arsp", 0.871, 0.885),
          row("arsp_random_search", 0.85, 0.88), row("arsp_random_search", 0.852, 0.881)]  # fmt: skip
  text = "\n".join(sections.search_lines({"rows": rows}))
  assert "| 0.9 | arsp | 8 | 87.05 ± 0.07 | 86.05 ± 0.07 | 88.25 | – |" in text
  assert "| 0.9 | arsp_random_search | 8 | 85.10 ± 0.14 |" in text
  assert sections.search_lines({"rows": rows[:2]}) == []


def test_p1_overhead_verdict_reads_the_runs_and_pools_them(tmp_path):
  """The P = 1 target's verdict (README's training-cost block) comes from each run's median
  of per-repeat ratios, and the pooled line says when a run disagrees with the pooled median."""
  from arsp_jax.study import results

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
  assert "**met** in this run" in results.p1_goal(fast)
  assert "+3% to +9%" in results.p1_goal(fast)
  assert "**missed** in this run" in results.p1_goal(slow)
  assert results.p1_goal({**fast, "settings": {"population": 16}}) == ""  # not a P = 1 run
  (line,) = results.p1_pooled_line(str(tmp_path))
  assert "the 2 runs above pooled (6 per-repeat ratios)" in line
  assert "median +10.5%" in line and "missed by the pooled median" in line
  assert line.endswith(", but not by every run.")
  # Files timed one pruning interval at a time say so, in the verdict and the pooled line.
  for name in ("a.json", "b.json"):
    with open(tmp_path / name) as f:
      d = json.load(f)
    with open(tmp_path / name, "w") as f:
      json.dump({**d, "timing_unit": "interval"}, f)
  assert "Per-interval overheads +3% to +9%" in results.p1_goal({**fast, "timing_unit": "interval"})
  (line,) = results.p1_pooled_line(str(tmp_path))
  assert "(6 per-interval ratios)" in line
