"""The benchmark lines of RESULTS.md and of the generated blocks of docs/measured.md and
docs/multi-host.md, each from one JSON file of ``bench/results/`` (the reward checks, the agent's
cost, memory, the input pipeline, the training step and its P = 1 floor, compiled windows)."""

from __future__ import annotations

import json
import os

import numpy as np


def reward_line(name: str, d: dict) -> str:
  """The agent's reward against the fine-tuned held-out validation accuracy
  (``bench/reward.py``)."""
  s = d["settings"]
  lo, hi = d["spearman_accuracy_reward_ci95"]
  llo, lhi = d["spearman_loss_reward_ci95"]
  return (
    f"- `{name}` (MLP hidden {tuple(d['hidden'])}, {len(d['rows'])} allocations from the "
    f"agent's initial policy at sparsity {s['sparsity']:g}, reward after "
    f"{s['recovery_steps']} recovery steps on {s['reward_size']:,} images, one-shot masks "
    f"fine-tuned {s['finetune_epochs']} epochs x {s['seeds']} seeds, target: held-out "
    f"validation accuracy): Spearman(accuracy reward, target) {d['spearman_accuracy_reward']:.2f} (95% "
    f"bootstrap CI {lo:.2f} to {hi:.2f}){_verdict(d)}; with minus the loss as the reward "
    f"{d['spearman_loss_reward']:.2f} ({llo:.2f} to {lhi:.2f}){_verdict(d, 'loss')}; the targets "
    f"span "
    f"{100 * d['finetuned_spread']:.2f} points, the reward's paired standard error against the "
    f"uniform allocation is {100 * d['median_paired_se']:.2f} points (median)"
    f"{_ceiling(d, 'data orders')}{_rescored(d)}."
  )


def _rescored(d: dict) -> str:
  """A rescored file (``bench/reward.py --rescore``): its reward against the original one."""
  if "spearman_loss_reward_with_rescored" not in d:
    return ""
  return (
    f"; rescored from `{os.path.basename(d['rescore_of'])}` with `{' '.join(d['settings']['set'])}`"
    f": its minus-the-loss reward ranks like the original's at "
    f"{d['spearman_loss_reward_with_rescored']:.2f}"
  )


#: The agent issue's bar for a shipped reward: Spearman >= 0.6 with the CI's lower bound >= 0.2.
REWARD_BAR = (0.6, 0.2)


def _verdict(d: dict, metric: str = "accuracy") -> str:
  rho, low = d[f"spearman_{metric}_reward"], d[f"spearman_{metric}_reward_ci95"][0]
  met = rho >= REWARD_BAR[0] and low >= REWARD_BAR[1]
  return f" — bar (>= {REWARD_BAR[0]}, CI low >= {REWARD_BAR[1]}) **{'met' if met else 'missed'}**"


def study_reward_line(name: str, d: dict) -> str:
  """The agent's reward of a study's fine-tuned allocations (``bench/reward.py --from_study``)."""
  s = d["settings"]
  lo, hi = d["spearman_accuracy_reward_ci95"]
  llo, lhi = d["spearman_loss_reward_ci95"]
  per_seed = ", ".join(f"{r:.2f}" for r in d.get("spearman_accuracy_reward_per_seed", []))
  return (
    f"- `{name}` (model `{d['model']}`, the {d['allocations']} allocations of "
    f"`{d['from_study']}` at sparsity {d['sparsity']:g}, each fine-tuned by the study's full "
    f"protocol on seeds {', '.join(str(x) for x in d['seeds'])}; reward after "
    f"{s['recovery_steps']} recovery steps on {s['reward_size']:,} images from each seed's dense "
    f"start, averaged; target: held-out validation accuracy of the final checkpoints, averaged): "
    f"Spearman(accuracy reward, target) {d['spearman_accuracy_reward']:.2f} (95% bootstrap CI {lo:.2f} to "
    f"{hi:.2f}){_verdict(d)}; per seed {per_seed}; with minus the loss {d['spearman_loss_reward']:.2f} "
    f"({llo:.2f} to {lhi:.2f}){_verdict(d, 'loss')}; the targets span "
    f"{100 * d['finetuned_spread']:.2f} points{_ceiling(d, 'seeds')}."
  )


def _ceiling(d: dict, who: str) -> str:
  """How well any reward could rank: the repeated fine-tunings' agreement (``target_ceiling``)."""
  c = d.get("target_ceiling") or {}
  if c.get("ceiling") is None:
    return ""
  return (
    f"; the {who} agree on the allocations' ranking at {c['split_half_spearman']:.2f}, so a "
    f"perfect reward could expect about {c['ceiling']:.2f} (the target's ceiling)"
  )


def agent_learning_line(name: str, d: dict) -> str:
  """The agent against random search on the 8-layer known-optimum task
  (``bench/agent_learning.py``, the task of ``tests/test_agent.py``)."""
  st, eps = d["settings"], str(d["settings"]["eps"])
  parts = []
  for pop, res in sorted(d["results"].items(), key=lambda kv: int(kv[0])):
    reach = {c: [r["evals_to_reach"][eps] for r in runs] for c, runs in res.items()}
    fmt = lambda xs: ", ".join("never" if x is None else str(x) for x in xs)  # noqa: E731
    wins = sum(
      a is not None and (b is None or a < b) for a, b in zip(reach["ppo"], reach["random_search"])
    )
    parts.append(
      f"P = {pop}: agent {fmt(reach['ppo'])}; random search {fmt(reach['random_search'])} "
      f"(agent faster in {wins} of {len(reach['ppo'])})"
    )
  noise = f" plus a fixed N(0, {st['noise']:g}^2) error per candidate" if st.get("noise") else ""
  agent = "".join(f", agent {s}" for s in st.get("set", []))
  return (
    f"- `{name}` (the real round on an MLP with {len(st['hidden'])} prunable layers, a synthetic "
    f"reward peaked at a known interior allocation{noise}, {st['rounds']} rounds, "
    f"{st['seeds']} seeds{agent}; candidate evaluations until the applied allocation stays "
    f"within {st['eps']} in log keep ratio of the optimum; figure "
    f"`bench/results/{name[:-5]}.png`): " + "; ".join(parts) + "."
  )


def agent_search_line(name: str, d: dict) -> str:
  """The agent's search against random search on a study's runs (``bench/agent_search.py``)."""
  a, b = (d["methods"] + [""])[:2]
  head = (
    f"- `{name}` (`{d['study']}`, {d.get('model', '?')}, sparsity {d['sparsity']:g}, figure "
    f"`bench/results/{name[:-5]}.png`): "
  )
  p = d.get("paired", {})
  if "evaluations" not in p:
    return head + f"{a}'s candidate rewards per search round (no paired comparison)."
  parts = []
  for k in ("candidate_reward_mean", "candidate_reward_max"):
    m, ci = p[k]["mean"], p[k]["ci95"]
    last = f" [{ci[0][-1]:+.4f}, {ci[1][-1]:+.4f}]" if ci else ""
    ahead = sum(x > 0 for x in m)
    parts.append(f"{k.split('_')[-1]} {m[-1]:+.4f}{last} (ahead in {ahead} of {len(m)} rounds)")
  seeds = f"paired over seeds {p['seeds']}" if len(p["seeds"]) > 1 else "one seed, no CI"
  figure = f"\n\n  ![{a} against {b}, reward by evaluations](bench/results/{name[:-5]}.png)\n"
  return head + (
    f"`{a}` minus `{b}` ({seeds}), candidates' reward in the last search round "
    f"({p['evaluations'][-1]} evaluations): " + "; ".join(parts) + "." + figure
  )


def run_cost_line(name: str, d: dict) -> str:
  """Whole runs of ARSP against ``gmp`` at the shipped defaults (``bench/run_cost.py``)."""
  st, sh = d["settings"], d["settings"]["shipped"]
  parts = []
  for row in d["rows"]:
    a, g = row["methods"]["arsp"], row["methods"]["gmp"]
    ratios = ", ".join(f"{r:.2f}" for r in a["whole_run_ratios"])
    verdict = "met" if a["whole_run_ratio_to_gmp"] <= RUN_COST_TARGET else "missed"
    parts.append(
      f"{_MODEL_NAMES.get(row['model'], row['model'])}: `gmp` {g['whole_run_s']:.0f} s, `arsp` {a['whole_run_s']:.0f} s, "
      f"**{a['whole_run_ratio_to_gmp']:.2f}x** (per repeat {ratios}; <= {RUN_COST_TARGET}x "
      f"{verdict}); pruning phase {a['pruning_phase_ratio_to_gmp']:.2f}x `gmp`'s, one search "
      f"round +{a['search_round_extra_s']:.1f} s ({row['runs']['arsp'][0]['search_rounds']} of "
      f"{row['runs']['arsp'][0]['rounds']} rounds search)"
    )
  load = st.get("load_average_at_end")
  return (
    f"- `{name}` (whole runs at the shipped defaults: P = {sh['population']}, K = "
    f"{sh['recovery_steps']}, {sh['reward_size']:,} reward images, candidates scored while the "
    f"budget tightens and {sh['search_after_budget']} rounds after; dense start + pruning + "
    f"fine-tuning, target sparsity {sh['target_sparsity']:g}; {st['repeats']} interleaved "
    f"repeats, medians; {st['cpu']}"
    + (f", load average {load[0]:.1f} at the end" if load else "")
    + "): "
    + "; ".join(parts)
    + "."
  )


_MODEL_NAMES = {"mlp": "default MLP", "deep": "deep MLP"}

#: The agent issue's bar: ARSP's whole run at most 1.3x ``gmp``'s at the shipped defaults.
RUN_COST_TARGET = 1.3


def agent_cost_line(name: str, d: dict) -> str:
  """One pruning interval of the ARSP step against the dense step (``bench/agent_cost.py``)."""
  parts = [
    f"P = {r['population']}, K = {r['recovery_steps']}"
    + (f", {r['reward_size']:,} reward images" if "reward_size" in r else "")
    + f": {r['interval_arsp_s']:.2f} s vs {r['interval_dense_s']:.2f} s ({r['ratio']:.1f}x)"
    for r in d["rows"]
  ]
  load = d["settings"].get("load_average_at_end")
  return (
    f"- `{name}` (default MLP, batch 256, one CPU device, {d['settings']['cpu']}; one pruning "
    f"interval of {d['rows'][0]['interval_steps']} steps with its round against as many dense "
    f"steps, best of {d['settings']['repeats']}"
    + (f"; load average {load[0]:.1f} at the end" if load else "")
    + "): "
    + "; ".join(parts)
    + "."
  )


def memory_lines(name: str, d: dict) -> list[str]:
  """Peak device memory of the compiled steps at ImageNet sizes (``bench/memory.py``)."""
  s = d["settings"]
  dense = {r["model"]: r["dense"]["peak_gib"] for r in d["rows"] if "dense" in r}
  parts = [
    f"{r['model']} P = {r['population']}, "
    + (
      "1 candidate at a time, "
      if r["eval_chunk"] == 1
      else f"{r['eval_chunk']} candidates at once, "
    )
    + (f"passes of {r['eval_batch']} images" if r["eval_batch"] else "whole sets in one pass")
    + f": {r['arsp']['peak_gib']:.1f} GiB"
    for r in d["rows"]
  ]
  dense_txt = ", ".join(f"{m} {g:.1f} GiB" for m, g in dense.items())
  return [
    f"- `{name}` (XLA:{d['settings']['backend'].upper()} buffer assignment, one device, batch "
    f"{s['batch_size']} of 224x224x3, {s['calib_size']:,} calibration and {s['reward_size']:,} "
    f"reward images resident): peak memory of the ARSP step (round included): "
    + "; ".join(parts)
    + f". The dense training step: {dense_txt}."
  ]


def input_pipeline_line(name: str, d: dict) -> str:
  """Images/s of the grain training path on JPEGs against the step (``bench/input_pipeline.py``)."""
  ds, pipe, step = d["dataset"], d["pipeline"], d.get("step")
  parts = []
  for r in pipe["rows"]:
    who = f"{r['workers']} worker processes" if r["workers"] != 1 else "1 worker process"
    if r["workers"] == 0:
      who = f"0 workers (grain in the training process, {r['decode_threads_in_process']} threads)"
    ratio = f", {r['ratio_to_step']:.1f}x the step" if "ratio_to_step" in r else ""
    parts.append(
      f"{who} {r['images_per_s']:,.0f} images/s ({r['first_batch_s']:.1f} s to the first "
      f"batch{ratio})"
    )
  text = (
    f"- `{name}` ({ds['train_images']:,} JPEGs of {ds['width']}x{ds['height']}, quality "
    f"{ds['jpeg_quality']}, {ds['train_bytes_per_image'] / 1024:.0f} KiB each; decode + "
    f"random-resized-crop + flip to {d['settings']['image_size']}, batches of "
    f"{pipe['batch_size']}; {d['cpu_count']} cores, {d['cpu']}, load average "
    f"{d['load_average_at_start'][0]:.1f} at the start, {d['load_average_at_end'][0]:.1f} at "
    f"the end): " + "; ".join(parts) + "."
  )
  if step:
    keeps = [w for w, ok in d["keeps_up"].items() if ok]
    text += (
      f" The dense {step['model']} step at {step['image_size']}x{step['image_size']}, batch "
      f"{step['batch_size']}, on this {step['platform'].upper()}: {step['ms_per_step']:,.0f} ms "
      f"({step['images_per_s']:,.1f} images/s, median of {step['steps_timed']}); the pipeline "
      + (
        f"keeps up with every worker count ({', '.join(keeps)})"
        if len(keeps) == len(d["keeps_up"])
        else f"keeps up with {', '.join(keeps) or 'no'} worker count(s) of "
        f"{', '.join(d['keeps_up'])}"
      )
      + " (each measured alone; in training they share the cores)."
    )
  return text


def multi_device_step_line(name: str, d: dict) -> str:
  """``bench/train_step.py --devices=N`` on fake CPU devices: that it completes, not speed."""
  st = d["settings"]
  return (
    f"- `{name}` ({d['model']}, batch {st['batch_size']}, {d['score']} score, P = "
    f"{st['population']}; {d['devices']} fake CPU devices on {d['cpu_count']} cores, "
    f"{d['platform']}, jax {d['jax']}; the host waiting for every step"
    + (
      f", XLA:CPU collective timeouts {st['collective_timeout_s']} s"
      if "collective_timeout_s" in st
      else ""
    )
    + f"; load average {d['load_average_at_end'][0]:.1f} at the end): ran to the end in "
    f"{d['wall_s']:,.0f} s, compiles and warm-up included ({st['repeats']} repeat(s) of "
    f"{d['steps_timed_per_repeat']} steps of each step kind, a round every "
    f"{st['prune_every']} steps; dense step {d['dense_ms_per_step']:,.0f} ms, ARSP step "
    f"{d['arsp_ms_per_step']:,.0f} ms averaged over its pruning interval: {d['devices']} "
    f"devices sharing {d['cpu_count']} cores, so correctness, not speed)."
  )


def train_step_line(name: str, d: dict, where: str) -> str:
  """One single-device ``train_step`` benchmark: the dense and the ARSP step, the overhead."""
  st = d["settings"]
  agent = (
    f", P = {st['population']}, {d['reward_size']:,} reward images"
    if "population" in st and "reward_size" in d
    else ""
  )
  spread = ""
  unit = _timing_unit(d)
  if d.get("arsp_ms_all_repeats"):
    lo, hi = min(d["arsp_ms_all_repeats"]), max(d["arsp_ms_all_repeats"])
    spread = f"; ARSP step {lo:.0f}-{hi:.0f} ms over {len(d['arsp_ms_all_repeats'])} {unit}s"
    if unit == "interval":
      spread += " timed one pruning interval at a time, interleaved with the dense step"
  return (
    f"- `{name}` ({d['model']}, batch {d['settings']['batch_size']}, {d['score']} score"
    f"{agent}; {where}{spread}): dense step {d['dense_ms_per_step']:.2f} ms "
    f"({d['dense_images_per_s']:,.0f} images/s), ARSP step {d['arsp_ms_per_step']:.2f} ms "
    f"({d['arsp_images_per_s']:,.0f} images/s): overhead {100 * d['arsp_overhead']:+.0f}%"
    + (f" (median of the per-{unit} ratios" if "arsp_overhead_ratio_of_medians" in d else "")
    + (
      f", bootstrap 95% CI {100 * d['arsp_overhead_ci95'][0]:+.1f}% to "
      f"{100 * d['arsp_overhead_ci95'][1]:+.1f}%)"
      if "arsp_overhead_ci95" in d
      else (")" if "arsp_overhead_ratio_of_medians" in d else "")
    )
    + (
      f" with the round chosen by the host ({100 * d['arsp_cond_overhead']:+.0f}% with the "
      f"old on-device `lax.cond`); carried by every step: {100 * d['carried_per_step_host']:+.0f}%"
      f" (cond: {100 * d['carried_per_step_cond']:+.0f}%); the round itself "
      f"{d['round_cost_ms']:,.0f} ms, once every {st['prune_every']} steps."
      if "arsp_cond_overhead" in d
      else "."
    )
    + p1_goal(d)
  )


def bench_lines(bench_dir: str) -> list[str]:
  """Training-step and mask benchmarks from ``bench/results/*.json``."""
  if not os.path.isdir(bench_dir):
    return []
  out = []
  for name in sorted(os.listdir(bench_dir)):
    if not name.endswith(".json"):
      continue
    with open(os.path.join(bench_dir, name)) as f:
      d = json.load(f)
    where = f"{d.get('device_kind', d.get('backend', '?'))}, jax {d.get('jax', d.get('jax_version', '?'))}"
    if d.get("benchmark") == "train_step" and d.get("devices", 1) > 1:
      out.append(multi_device_step_line(name, d))
    elif d.get("benchmark") == "input_pipeline":
      out.append(input_pipeline_line(name, d))
    elif d.get("benchmark") == "windows":
      out.append(windows_line(name, d))
    elif d.get("benchmark") == "train_step":
      out.append(train_step_line(name, d, where))
    elif "spearman_accuracy_reward" in d and "from_study" in d:
      out.append(study_reward_line(name, d))
    elif "spearman_accuracy_reward" in d:
      out.append(reward_line(name, d))
    elif d.get("benchmark") == "agent_cost":
      out.append(agent_cost_line(name, d))
    elif d.get("benchmark") == "run_cost":
      out.append(run_cost_line(name, d))
    elif d.get("benchmark") == "agent_learning":
      out.append(agent_learning_line(name, d))
    elif d.get("benchmark") == "agent_search":
      out.append(agent_search_line(name, d))
    elif d.get("benchmark") == "memory":
      out += memory_lines(name, d)
    elif "mask_weight" in next(iter(d.get("results", {}).values()), {}):
      size = max(d["results"], key=int)
      r = d["results"][size]
      out.append(
        f"- `{name}` ({where}): exact weighted-reservoir mask over {int(size):,} weights "
        f"{1000 * r['mask_weight']['median_s']:.1f} ms (radix selection "
        f"{1000 * r['select_radix']['median_s']:.1f} ms), median of "
        f"{d['settings']['repeats']} repeats."
      )
  if not out:
    return []
  head = [
    "## Benchmarks",
    "",
    "From the JSON files in `bench/results/` (`python bench/train_step.py`, "
    "`python bench/masks.py`, `python bench/reward.py`, `python bench/memory.py`, "
    "`python bench/input_pipeline.py`). The ARSP "
    "step is averaged over whole "
    "pruning intervals, the round's fixed cost included.",
    "",
  ]
  return head + out + [""]


#: The pods issue's target for the pruning phase's overhead at P = 1 on the CPU.
P1_CPU_TARGET = 0.10


def p1_goal(d: dict) -> str:
  """The P = 1 target's verdict for a one-device CPU ``train_step`` benchmark ('' otherwise)."""
  st = d.get("settings", {})
  if st.get("population") != 1 or d.get("devices", 1) != 1 or d.get("platform") != "cpu":
    return ""
  met = d["arsp_overhead"] <= P1_CPU_TARGET
  r = _p1_ratios(d)
  load = d.get("load_average_at_end")
  at = f"; load average {load[0]:.1f} at the end" if load else ""
  return (
    f" Per-{_timing_unit(d)} overheads {100 * r.min():+.0f}% to {100 * r.max():+.0f}%{at}. Target at "
    f"P = 1 on the CPU, <= {100 * P1_CPU_TARGET:.0f}%: **{'met' if met else 'missed'}** in this run."
  )


def _timing_unit(d: dict) -> str:
  """What one entry of a ``train_step`` JSON's ``*_all_repeats`` lists times: a repeat (the
  older files: a block of pruning intervals) or one pruning interval."""
  return d.get("timing_unit", "repeat")


def _p1_ratios(d: dict):
  a, dn = np.asarray(d["arsp_ms_all_repeats"]), np.asarray(d["dense_ms_all_repeats"])
  return a / dn - 1.0


def p1_pooled_line(bench_dir: str) -> list[str]:
  """The P = 1 CPU runs' per-repeat (or per-interval) overheads pooled (one run is noisy on a
  shared VM)."""
  runs, dicts = [], []
  for name in sorted(os.listdir(bench_dir)) if os.path.isdir(bench_dir) else []:
    if name.endswith(".json"):
      with open(os.path.join(bench_dir, name)) as f:
        d = json.load(f)
      if d.get("benchmark") == "train_step" and p1_goal(d):
        runs.append((name, _p1_ratios(d)))
        dicts.append(d)
  if len(runs) < 2:
    return []
  units = {_timing_unit(d) for d in dicts}
  unit = units.pop() if len(units) == 1 else "timed block"
  pooled = np.concatenate([r for _, r in runs])
  rng = np.random.default_rng(0)
  boot = [np.median(rng.choice(pooled, pooled.size)) for _ in range(2000)]
  lo, hi = np.percentile(boot, [2.5, 97.5])
  met = float(np.median(pooled)) <= P1_CPU_TARGET
  return [
    f"- P = 1, the {len(runs)} runs above pooled ({pooled.size} per-{unit} ratios): overhead "
    f"median {100 * np.median(pooled):+.1f}% (bootstrap 95% CI {100 * lo:+.1f}% to "
    f"{100 * hi:+.1f}%): the <= {100 * P1_CPU_TARGET:.0f}% target is "
    + ("met by the pooled median" if met else "missed by the pooled median")
    + (", but not by every run." if any(np.median(r) > P1_CPU_TARGET for _, r in runs) else ".")
  ]


def windows_line(name: str, d: dict) -> str:
  """``bench/windows.py``: one program call per step against compiled multi-step windows."""
  st, ms = d["settings"], d["ms_per_step"]
  return (
    f"- `{name}` ({d['model']}, batch {st['batch_size']}, P = {st['population']}, a round every "
    f"{st['prune_every']} steps, dense windows of {st['window']} steps, ARSP windows of one "
    f"pruning interval; {d['cpu']}, load average {d['load_average_at_end'][0]:.1f} at the end; "
    f"{st['repeats']} interleaved repeats, ratios within each repeat, medians): windows take "
    f"{d['windows_vs_per_step_dense']:.2f}x the per-step time in the dense phase "
    f"({ms['dense_windows']:.1f} vs {ms['dense_per_step']:.1f} ms per step) and "
    f"{d['windows_vs_per_step_arsp']:.2f}x in the pruning phase ({ms['arsp_windows']:.1f} vs "
    f"{ms['arsp_per_step']:.1f} ms, rounds included); the pruning phase's overhead against the "
    f"dense phase of the same form: {100 * d['arsp_overhead_per_step']:+.0f}% per step, "
    f"{100 * d['arsp_overhead_windows']:+.0f}% in windows."
  )


def training_cost_lines(bench_dir: str) -> list[str]:
  """README's training-cost block: the train-step, windows and agent-cost benchmarks' lines."""
  keep = ("run_cost", "agent_cost", "train_step", "windows")  # the whole run first
  every = bench_lines(bench_dir)
  lines = [ln for k in keep for ln in every if ln.startswith(f"- `{k}")]
  lines += p1_pooled_line(bench_dir)
  return lines or ["(no training-cost benchmark in bench/results/)"]


def input_pipeline_lines(bench_dir: str) -> list[str]:
  """README's input-pipeline block: ``bench/input_pipeline.py``'s lines."""
  lines = [ln for ln in bench_lines(bench_dir) if ln.startswith("- `input_pipeline")]
  return lines or ["(no input-pipeline benchmark in bench/results/)"]
