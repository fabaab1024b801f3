"""The comparison harness on a tiny synthetic grid, its statistics and its run locks."""

import csv
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from arsp_jax.study import grid, report, results, stats
from arsp_jax.study.__main__ import main
from tests.util import TINY_SETS


@pytest.fixture(scope="session")  # built once per worker, not per module visit
def study(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("study"))
  argv = [
    "--workdir",
    wd,
    "--dataset",
    "synthetic",
    "--methods",
    "arsp,magnitude",
    "--sparsities",
    "0.5,0.8",
    "--seeds",
    "2",
  ]
  for s in TINY_SETS:
    argv += ["--set", s]
  assert main(argv) == 0
  return wd, argv


def test_grid_writes_every_study_file(study):
  wd, _ = study
  for name in ("runs.csv", "report.md", "pareto.png", "keep_ratios.png", "study.json"):
    assert os.path.getsize(os.path.join(wd, name)) > 0, name
  with open(os.path.join(wd, "runs.csv")) as f:
    rows = list(csv.DictReader(f))
  # 2 dense starts + 2 controls + 2 methods x 2 sparsities x 2 seeds
  assert len(rows) == 12 and all(r["status"] == "done" for r in rows)
  for col in (
    "method",
    "target_sparsity",
    "sparsity",
    "seed",
    "dense_test_accuracy",
    "test_accuracy",
    "bits_per_weight",
    "wall_seconds",
    "hyperscore",
  ):
    assert col in rows[0], col
  for r in rows:
    if r["method"] == "magnitude":  # layerwise one-shot: exactly the target
      assert abs(float(r["sparsity"]) - float(r["target_sparsity"])) < 1e-3
    if r["method"] == "arsp":  # exact budget (the default): the target too
      assert abs(float(r["sparsity"]) - float(r["target_sparsity"])) < 2e-3
    if r["method"] in ("arsp", "magnitude"):  # signs + mask: < 1 bit at 0.8, ~1.5 at 0.5
      assert float(r["bits_per_weight"]) < (1.0 if float(r["target_sparsity"]) > 0.7 else 1.6)
  # Every pruning run of a seed started from that seed's dense run.
  dense = {r["seed"]: r["test_accuracy"] for r in rows if r["method"] == "dense"}
  for r in rows:
    if r["method"] not in ("dense",):
      assert r["dense_test_accuracy"] == dense[r["seed"]]


def test_report_has_the_statistics(study):
  wd, _ = study
  text = open(os.path.join(wd, "report.md")).read()
  for needle in (
    "Welch",
    "ANOVA",
    "linregress",
    "95%",
    "| 0.5 | magnitude |",
    "Where ARSP wins, ties or loses",
  ):
    assert needle in text, needle
  # The numbers in the table are the ones in runs.csv.
  with open(os.path.join(wd, "runs.csv")) as f:
    rows = list(csv.DictReader(f))
  acc = [
    100 * float(r["test_accuracy"])
    for r in rows
    if r["method"] == "magnitude" and float(r["target_sparsity"]) == 0.8
  ]
  assert f"{np.mean(acc):.2f} ± {np.std(acc, ddof=1):.2f}" in text


def test_rerun_skips_finished_runs(study, capsys):
  wd, argv = study
  mtimes = {
    n: os.path.getmtime(os.path.join(wd, "runs", n, "results.json"))
    for n in os.listdir(os.path.join(wd, "runs"))
    if not n.endswith(".lock")
  }
  assert main(argv) == 0
  assert "ran 0, already done 12" in capsys.readouterr().out
  for n, t in mtimes.items():
    assert os.path.getmtime(os.path.join(wd, "runs", n, "results.json")) == t


def test_another_base_config_in_the_same_study_is_refused(study, capsys):
  wd, argv = study
  assert main(argv + ["--set", "finetune.epochs=2"]) == 2
  assert "another base configuration" in capsys.readouterr().err


def test_bad_arguments_are_user_errors(tmp_path, capsys):
  for extra in (
    ["--methods", "arsp,snip"],
    ["--sparsities", "1.5"],
    ["--seeds", "0"],
    ["--methods", "arsp:bogus"],
    ["--methods", "arsp@arsp.nokey=1"],
    ["--methods", "arsp@delta"],
  ):
    assert main(["--workdir", str(tmp_path / "x"), "--dataset", "synthetic"] + extra) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_statistics_are_scipys():
  from scipy import stats as sp

  a, b = [90.1, 90.5, 89.9], [88.0, 88.4, 87.5]
  w = stats.welch(a, b)
  t, p = sp.ttest_ind(a, b, equal_var=False)
  assert w["p"] == pytest.approx(p) and w["t"] == pytest.approx(t)
  s = stats.summarize(a)
  lo, hi = sp.t.interval(0.95, 2, loc=np.mean(a), scale=sp.sem(a))
  assert (s["ci_low"], s["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def _claim_many(args):
  lock_dir, names = args
  return [n for n in names if grid.claim(os.path.join(lock_dir, n + ".lock"))]


def test_two_processes_never_claim_the_same_run(tmp_path):
  names = [f"run{i}" for i in range(200)]
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(2) as pool:
    got = pool.map(_claim_many, [(str(tmp_path), names), (str(tmp_path), names[::-1])])
  assert sorted(got[0] + got[1]) == sorted(names)  # each run claimed exactly once


def test_stale_lock_is_taken_over_live_one_is_not(tmp_path):
  import socket

  lock = str(tmp_path / "r.lock")
  dead = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
  ).stdout.strip()
  with open(lock, "w") as f:
    json.dump({"pid": int(dead), "host": socket.gethostname()}, f)
  assert grid.claim(lock)  # its process is gone: taken over
  assert json.load(open(lock))["pid"] == os.getpid()
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
  try:
    with open(lock, "w") as f:
      json.dump({"pid": live.pid, "host": socket.gethostname()}, f)
    assert not grid.claim(lock)  # held by a live process
  finally:
    live.kill()
    live.wait()


# ----------------------------------------------------------------------------------------------
# RESULTS.md generated from the study's runs.csv (python -m arsp_jax.study.results)
# ----------------------------------------------------------------------------------------------


def _csv_accuracies(path):
  """{(method, target): [test accuracy in %]} read straight from runs.csv."""
  out = {}
  with open(path) as f:
    for r in csv.DictReader(f):
      if r["status"] == "done" and r["method"] != "dense":
        out.setdefault((r["method"], float(r["target_sparsity"])), []).append(
          100 * float(r["test_accuracy"])
        )
  return out


def _p(p):
  return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _generate(study_dir, tmp_path, extra_dirs=()):
  """Copies the study (runs.csv + report.md) under a fresh results/ and runs the generator."""
  root = tmp_path / "results"
  (root / "tiny").mkdir(parents=True)
  for name in ("runs.csv", "report.md"):
    shutil.copy(os.path.join(study_dir, name), root / "tiny" / name)
  for name, files in extra_dirs:
    (root / name).mkdir(exist_ok=True)
    for fname, text in files.items():
      (root / name / fname).write_text(text)
  out = tmp_path / "RESULTS.md"
  argv = ["--results_dir", str(root), "--bench_dir", str(tmp_path / "none"), "--out", str(out)]
  assert results.main(argv + ["--readme", ""]) == 0
  return out, argv


def _seed_acc(path):
  """{(method, target): {seed: test accuracy in %}} read straight from runs.csv."""
  out = {}
  with open(path) as f:
    for r in csv.DictReader(f):
      if r["status"] == "done" and r["method"] != "dense":
        key = (r["method"], float(r["target_sparsity"]))
        out.setdefault(key, {})[int(r["seed"])] = 100 * float(r["test_accuracy"])
  return out


def _paired_p(d):
  from scipy import stats as sp

  return sp.ttest_rel(d, np.zeros_like(d)).pvalue


def test_results_md_archives_an_adhoc_study_paired_and_without_verdicts(study, tmp_path):
  """A study without a protocol goes to the archive: its cells are runs.csv's mean ± std, and
  ARSP against each method is the paired (by seed) difference with scipy's paired p; no
  verdict words, nothing in the summary."""
  wd, _ = study
  out, _ = _generate(wd, tmp_path)
  text = out.read_text()
  archive = text[text.index("## Archive") :]
  acc = _csv_accuracies(os.path.join(wd, "runs.csv"))
  seed_acc = _seed_acc(os.path.join(wd, "runs.csv"))
  for t in (0.5, 0.8):
    a = acc[("arsp", t)]
    arsp_row = next(ln for ln in archive.splitlines() if ln.startswith("| arsp | "))
    assert f"{np.mean(a):.2f} ± {np.std(a, ddof=1):.2f}" in arsp_row
    d = np.array([seed_acc[("arsp", t)][s] - seed_acc[("magnitude", t)][s] for s in (0, 1)])
    row = f"| {t:g} | magnitude | 2 | {d.mean():+.2f} ["
    line = next(ln for ln in archive.splitlines() if ln.startswith(row))
    assert line.split(" | ")[4].strip() == _p(_paired_p(d))
  ctrl = acc[("control", 0.0)]
  assert f"Unpruned control: {np.mean(ctrl):.2f} ± {np.std(ctrl, ddof=1):.2f} (n=2)." in archive
  assert not re.search(r"\b(wins|loses|ties?)\b", archive)
  summary = text[text.index("## Summary") : text.index("## Setup")]
  assert "tiny" not in summary and "No protocol study has runs yet." in summary


def test_results_md_of_a_protocol_study_from_real_runs(study, tmp_path):
  """The same real runs under a protocol naming `arsp` the reference: the report's paired
  comparison and its Holm-adjusted p agree with scipy on runs.csv; a protocol naming another
  reference than the index is refused."""
  wd, _ = study
  proto = {
    "study": "tiny", "title": "tiny protocol study", "dataset": "synthetic", "seeds": [0, 1],
    "metric": "test_accuracy",
    "arms": [{"name": "all", "open": True, "methods": ["magnitude", "arsp"],
              "sparsities": [0.5, 0.8], "seeds": [0, 1]}],
    "reference": {"method": "arsp", "compared_with": ["magnitude"]},
    "statistics": {"paired_by": "seed", "test": "ttest_rel", "ci": "bootstrap",
                   "correction": "holm", "alpha": 0.05, "bootstrap_resamples": 100},
    "frontier": {"accuracy_drops": [1.0, 3.0]},
  }  # fmt: skip
  out, argv = _generate(wd, tmp_path, [("tiny", {"protocol.json": json.dumps(proto)})])
  text = out.read_text()
  seed_acc = _seed_acc(os.path.join(wd, "runs.csv"))
  for t in (0.5, 0.8):
    d = np.array([seed_acc[("arsp", t)][s] - seed_acc[("magnitude", t)][s] for s in (0, 1)])
    row = f"| {t:g} | magnitude | 2 | {d.mean():+.2f} ["
    line = next(ln for ln in text.splitlines() if ln.startswith(row))
    cells = [c.strip() for c in line.strip("|").split("|")]
    p = _paired_p(d)
    assert cells[4] == _p(p) and cells[5] == _p(p)  # one comparison per cell: Holm = p
    assert cells[6] == ("tie" if p >= 0.05 else ("wins" if d.mean() > 0 else "loses"))
  assert "tiny protocol study" in text[text.index("## Summary") : text.index("## Setup")]
  assert "## Archive" not in text  # the only study has a protocol
  index = tmp_path / "results" / "index.json"
  index.write_text(json.dumps({"studies": [{"dir": "tiny", "reference": "magnitude"}]}))
  assert results.main(argv + ["--readme", ""]) == 2  # a reference the protocol does not name


def test_results_check_fails_after_a_hand_edit(study, tmp_path):
  wd, _ = study
  out, argv = _generate(wd, tmp_path)
  assert results.main(argv + ["--readme", "", "--check"]) == 0
  text = out.read_text()
  m = re.search(r"\| arsp \| (\d+\.\d\d)", text)
  edited = text.replace(m.group(0), m.group(0)[:-2] + ("00" if m.group(1)[-2:] != "00" else "01"))
  out.write_text(edited)
  assert results.main(argv + ["--readme", "", "--check"]) == 1
  assert out.read_text() == edited  # --check writes nothing


def test_results_headroom_section(study, tmp_path):
  """An earlier headroom study (allocations as method variants, the layout headroom.py reads)
  is archived with the spread of the allocations and the naive headroom over the best rule."""
  wd, _ = study
  rng = np.random.default_rng(0)
  rows = [
    {
      "run": f"a{k}_s{s}",
      "method": f"random_alloc@alloc.seed={k}",
      "target_sparsity": 0.5,
      "seed": s,
      "status": "done",
      "test_accuracy": float(rng.uniform(0.1, 0.3)),
    }
    for k in range(10)  # headroom.MIN_ALLOCATIONS
    for s in range(2)
  ]
  hdir = tmp_path / "headroom_src"
  hdir.mkdir()
  grid.write_csv(rows, str(hdir / "runs.csv"))
  title = open(os.path.join(wd, "report.md")).readline()  # same model as the tiny study
  out, _ = _generate(
    wd,
    tmp_path,
    [("headroom_tiny", {"runs.csv": (hdir / "runs.csv").read_text(), "report.md": title})],
  )
  text = out.read_text()
  means = sorted(
    np.mean([100 * r["test_accuracy"] for r in rows if r["method"] == m])
    for m in {r["method"] for r in rows}
  )
  acc = _csv_accuracies(os.path.join(wd, "runs.csv"))
  rule, arsp = np.mean(acc[("magnitude", 0.5)]), np.mean(acc[("arsp", 0.5)])
  room = means[-1] - rule
  above = sum(m < arsp for m in means)
  row = (
    f"| 0.5 | 10 (20) | {means[-1]:.2f} | {np.median(means):.2f} | {means[0]:.2f} | "
    f"{means[-1] - means[0]:.2f} | magnitude {rule:.2f} | {room:+.2f} | {arsp:.2f} | "
    f"{above} of 10 |"
  )
  assert row in text[text.index("## Archive") :], row
  # Fewer allocations: their spread is shown, but no headroom.
  from arsp_jax.study import headroom  # noqa: PLC0415

  few = headroom.measure(rows[:6], [stats.groups(grid.read_csv(os.path.join(wd, "runs.csv")))])
  assert few[0.5]["allocations"] == 3 and few[0.5]["headroom"] is None
  assert few[0.5]["rule"] == "magnitude"
  best = max({r["method"] for r in rows}, key=lambda m: np.mean(
    [r["test_accuracy"] for r in rows if r["method"] == m]))  # fmt: skip
  assert f"- Best allocation at 0.5: `{best}`." in text  # (no keep_* columns in these rows)


def test_headroom_sweep_ranks_each_layer_against_the_accuracy():
  """The random allocations read as a controlled sweep: a layer whose keep ratio orders the
  accuracies gets rank correlation +1, the layer that pays for it -1, a constant layer none."""
  from arsp_jax.study import headroom  # noqa: PLC0415

  rng = np.random.default_rng(1)
  k1 = rng.permutation(np.linspace(0.05, 0.5, 12))
  rows = [
    {
      "run": f"a{k}_s{s}",
      "method": f"random_alloc@alloc.seed={k}",
      "target_sparsity": 0.9,
      "seed": s,
      "status": "done",
      "test_accuracy": 0.8 + 0.1 * k1[k] + 0.001 * s,  # increases with fc1's ratio
      "keep_fc1": k1[k],
      "keep_fc2": 0.6 - k1[k],
      "keep_out": 1.0,
    }
    for k in range(12)
    for s in range(2)
  ]
  sweep = {c["layer"]: c for c in headroom.measure(rows, [])[0.9]["sweep"]}
  assert set(sweep) == {"fc1", "fc2"}  # the constant layer has no ranking
  assert sweep["fc1"]["rho"] == pytest.approx(1.0) and sweep["fc2"]["rho"] == pytest.approx(-1.0)
  assert sweep["fc1"]["p"] < 1e-6
  lines = headroom.section("headroom_x", "t", headroom.measure(rows, []))
  assert any("fc1 +1.00" in line and "fc2 -1.00" in line for line in lines)
  # Fewer allocations than a headroom needs: no sweep either.
  assert headroom.measure(rows[:8], [])[0.9]["sweep"] == []


def test_keep_ratio_table_says_whether_every_run_orders_the_layers_alike():
  rows = [
    {"method": m, "target_sparsity": 0.9, "seed": s, "status": "done", "test_accuracy": 0.8,
     "keep_fc1": k1, "keep_fc2": k2, "keep_fc3": k3}
    for m, s, (k1, k2, k3) in [
      ("a", 0, (0.05, 0.30, 0.10)), ("a", 1, (0.08, 0.20, 0.12)),  # fc2 > fc3 > fc1 in both
      ("b", 0, (0.05, 0.30, 0.10)), ("b", 1, (0.20, 0.10, 0.12)),  # two orders
    ]
  ]  # fmt: skip
  table = report.keep_ratio_table(rows, ["a", "b"], [0.9])
  assert table[2].endswith("| fc2 ≥ fc3 ≥ fc1 |") and table[3].endswith("| differs (2 orders) |")


# bench/agent_search.py: the agent's search rewards per round, from a study's runs


def test_agent_search_paired_difference_by_hand():
  from bench import agent_search  # noqa: PLC0415

  a = {0: {"evaluations": [8, 16], "candidate_reward_mean": [1.0, 2.0], "candidate_reward_max": [3.0, 3.0]},
       1: {"evaluations": [8, 16], "candidate_reward_mean": [2.0, 4.0], "candidate_reward_max": [3.0, 5.0]}}  # fmt: skip
  b = {s: {**c, "candidate_reward_mean": [0.0, 1.0], "candidate_reward_max": [3.0, 3.0]} for s, c in a.items()}  # fmt: skip
  p = agent_search.paired(a, b)
  assert p["seeds"] == [0, 1] and p["evaluations"] == [8, 16]
  assert p["candidate_reward_mean"]["mean"] == [1.5, 2.0]
  # differences 1 and 3 in round 2: sd sqrt(2), half-width t(0.975, 1) * sqrt(2) / sqrt(2)
  lo, hi = p["candidate_reward_mean"]["ci95"][0][1], p["candidate_reward_mean"]["ci95"][1][1]
  assert hi - 2.0 == pytest.approx(12.706, abs=1e-3) and 2.0 - lo == pytest.approx(12.706, abs=1e-3)
  assert p["candidate_reward_max"]["mean"] == [0.0, 1.0]
  one = agent_search.paired({0: a[0]}, {0: b[0]})  # one seed: the differences, no interval
  assert one["candidate_reward_mean"] == {"mean": [1.0, 1.0], "ci95": None}


def test_agent_search_reads_a_studys_agent_runs(study, tmp_path, capsys):
  from bench import agent_search  # noqa: PLC0415

  wd, _ = study
  out = str(tmp_path / "bench")
  assert (
    agent_search.main([f"--study={wd}", "--sparsity=0.8", "--methods=arsp", f"--out={out}"]) == 0
  )
  stem = os.path.join(out, f"agent_search_{os.path.basename(wd)}_0.8")
  with open(stem + ".json") as f:
    d = json.load(f)
  assert os.path.getsize(stem + ".png") > 0
  assert sorted(d["curves"]["arsp"]) == ["0", "1"]  # both seeds
  for c in d["curves"]["arsp"].values():  # the tiny study: 4 candidates per round, every round
    assert c["evaluations"] == [4 * (i + 1) for i in range(len(c["evaluations"]))]
    assert len(c["evaluations"]) >= 2 and np.isfinite(c["candidate_reward_mean"]).all()
  from arsp_jax.study import benchlines  # noqa: PLC0415

  assert "arsp's candidate rewards" in benchlines.agent_search_line(
    os.path.basename(stem) + ".json", d
  )
  # A method without runs is a user error, not a traceback.
  assert agent_search.main([f"--study={wd}", "--sparsity=0.8", f"--out={out}"]) == 2
  assert "no finished run of arsp_random_search" in capsys.readouterr().err


def test_reward_target_ceiling_by_hand():
  from bench import reward  # noqa: PLC0415

  # two seeds' accuracies of 4 allocations: ranks (1,2,3,4) and (2,1,3,4), Spearman 1 - 6*2/60
  c = reward.target_ceiling([[0.1, 0.2], [0.2, 0.1], [0.3, 0.3], [0.4, 0.4]])
  assert c["split_half_spearman"] == pytest.approx(0.8)
  assert c["reliability"] == pytest.approx(2 * 0.8 / 1.8)
  assert c["ceiling"] == pytest.approx(np.sqrt(2 * 0.8 / 1.8))
  # seeds that disagree completely: nothing to rank, the ceiling is 0
  assert reward.target_ceiling([[1, 3], [2, 2], [3, 1]])["ceiling"] == 0.0
  assert reward.target_ceiling([[1], [2], [3]])["ceiling"] is None


def test_study_reward_line_states_the_bar_and_the_targets_ceiling():
  from arsp_jax.study import benchlines  # noqa: PLC0415

  d = {"model": "deep", "allocations": 16, "from_study": "results/x", "sparsity": 0.99,
       "seeds": [0, 1], "settings": {"recovery_steps": 10, "reward_size": 2000},
       "spearman_accuracy_reward": 0.79, "spearman_accuracy_reward_ci95": [0.4, 0.9],
       "spearman_loss_reward": 0.82, "spearman_loss_reward_ci95": [0.45, 0.97],
       "spearman_accuracy_reward_per_seed": [0.5, 0.6], "finetuned_spread": 0.011}  # fmt: skip
  line = benchlines.study_reward_line("r.json", d)
  assert "minus the loss 0.82 (0.45 to 0.97) — bar (>= 0.6, CI low >= 0.2) **met**" in line
  assert "ceiling" not in line and line.endswith("span 1.10 points.")
  d["target_ceiling"] = {"split_half_spearman": 0.46, "reliability": 0.63, "ceiling": 0.794}
  line = benchlines.study_reward_line("r.json", d)
  assert line.endswith("agree on the allocations' ranking at 0.46, so a perfect reward could "
                       "expect about 0.79 (the target's ceiling).")  # fmt: skip


def test_ceiling_of_reads_model_mode_files_and_refuses_others(tmp_path, capsys):
  from arsp_jax.study import benchlines  # noqa: PLC0415
  from bench import reward  # noqa: PLC0415

  rows = [{"finetuned_accuracies": a, "reward": 0.5, "reward_loss": 1.0} for a in
          ([0.1, 0.2], [0.2, 0.1], [0.3, 0.3], [0.4, 0.4])]  # fmt: skip
  d = {"model": "deep", "hidden": [8], "rows": rows, "finetuned_spread": 0.01,
       "median_paired_se": 0.002, "settings": {"sparsity": 0.9, "recovery_steps": 10,
       "reward_size": 2000, "finetune_epochs": 2, "seeds": 2},
       "spearman_accuracy_reward": 0.3, "spearman_accuracy_reward_ci95": [-0.2, 0.7],
       "spearman_loss_reward": 0.3, "spearman_loss_reward_ci95": [-0.2, 0.7]}  # fmt: skip
  path = tmp_path / "r.json"
  path.write_text(json.dumps(d))
  reward.add_ceiling(str(path))
  out = json.loads(path.read_text())
  assert out["target_ceiling"]["split_half_spearman"] == pytest.approx(0.8)
  assert out["rows"] == rows  # nothing else rewritten
  assert benchlines.reward_line("r.json", out).endswith(
    "the data orders agree on the allocations' ranking at 0.80, so a perfect reward could "
    "expect about 0.94 (the target's ceiling).")  # fmt: skip
  # a rescored file also says how its reward ranks against the one it rescored
  old_rows = [dict(r, reward_loss=x) for r, x in zip(rows, (1.0, 2.0, 3.0, 4.0))]
  new_rows = [dict(r, reward_loss=x) for r, x in zip(rows, (2.0, 1.0, 3.0, 4.0))]
  out.update(rescore_of="bench/results/r0.json", spearman_loss_reward_with_rescored=(
    reward.rescore_agreement(old_rows, new_rows)))  # fmt: skip
  out["settings"]["set"] = ["arsp.recovery_steps=20"]
  assert out["spearman_loss_reward_with_rescored"] == pytest.approx(0.8)
  assert benchlines.reward_line("r.json", out).endswith(
    "(the target's ceiling); rescored from `r0.json` with `arsp.recovery_steps=20`: its "
    "minus-the-loss reward ranks like the original's at 0.80.")  # fmt: skip
  path.write_text("{}")
  with pytest.raises(SystemExit, match="no rows with per-seed accuracies"):
    reward.add_ceiling(str(path))


def test_agent_search_line_embeds_its_figure():
  from arsp_jax.study import benchlines  # noqa: PLC0415

  cmp = {"mean": [0.01, -0.02], "ci95": [[-0.01, -0.05], [0.03, 0.01]]}
  d = {"methods": ["arsp", "arsp_random_search"], "study": "s", "model": "mlp", "sparsity": 0.99,
       "paired": {"seeds": [0, 1, 2], "evaluations": [8, 16],
                  "candidate_reward_mean": cmp, "candidate_reward_max": cmp}}  # fmt: skip
  line = benchlines.agent_search_line("agent_search_s_0.99.json", d)
  assert "mean -0.0200 [-0.0500, +0.0100] (ahead in 1 of 2 rounds)" in line
  assert line.endswith("\n\n  ![arsp against arsp_random_search, reward by evaluations]"
                       "(bench/results/agent_search_s_0.99.png)\n")  # fmt: skip
