"""README's figures for the main job (``python train.py``), all from one run's files in
``results/main_job/``: ``results.json`` (written by train.py, without its history),
``config.json``, ``eval.json`` (``python eval.py --workdir=… --export=model.arsp``) and
``run.json`` (how and where it ran). The README holds each block between
``<!-- generated:NAME … -->`` and ``<!-- /generated:NAME -->``; a block opened inside a list
item is indented like its markers."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from arsp_jax.study import stats
from arsp_jax.study.grid import REFERENCE

KIB = 8 * 1024  # bits per KiB


def load(path: str) -> dict | None:
  """The main job's files (None when ``results.json`` is missing; the others optional)."""
  if not os.path.exists(os.path.join(path, "results.json")):
    return None
  out = {}
  for name in ("results", "config", "eval", "run"):
    p = os.path.join(path, name + ".json")
    out[name] = {}
    if os.path.exists(p):
      with open(p) as f:
        out[name] = json.load(f)
  if not out["config"]:
    out["config"] = out["results"].get("config", {})
  return out


def kib(bits: float) -> str:
  return f"{bits / KIB:,.1f}"


def _control_line(studies: list[dict]) -> str:
  """ARSP at 0.9 against the unpruned control in the first study that has both."""
  for s in studies:
    a, c = s["groups"].get((REFERENCE, 0.9)), s["groups"].get(("control", 0.0))
    if a and c:
      w = stats.welch(a, c)
      return (
        f" The fair reference is the unpruned control trained through the same phases: "
        f"{np.mean(c):.2f}% in the study `results/{s['dir']}/` ({len(c)} seeds; "
        f"{s.get('heading', s['dir'])}), where that study's ARSP at 0.9 is {-w['diff']:.2f} "
        "points below it (RESULTS.md)."
      )
  return ""


def main_block(m: dict, studies: list[dict]) -> str:
  r, run = m["results"], m["run"]
  size, ls = r["size"], r["layer_sparsity"]
  acc, dense = 100 * r["test_accuracy"], 100 * r["dense_test_accuracy"]
  lines = [
    f"One run of `{run.get('command', 'python train.py')}` "
    f"({run.get('machine', 'machine not recorded')}); every figure in this block is read from "
    "`results/main_job/` by `python -m arsp_jax.study.results`.",
    "",
    "| run | test accuracy | sparsity (" + " / ".join(ls) + ") | HyperScore | train time |",
    "| --- | --- | --- | --- | --- |",
    f"| its dense phase ({r['epochs']} epochs) | {dense:.2f}% | 0 | – | – |",
    f"| ARSP, target {r['target_sparsity']:g} (the main job) | {acc:.2f}% | "
    f"{r['sparsity']:.3f} (" + " / ".join(f"{v:.3f}" for v in ls.values()) + f") | "
    f"{r['hyperscore']:.2f} | {r['train_seconds']:.0f} s{' (loaded machine)' if run.get('machine_loaded') else ''} |",
    "",
    f"* ARSP loses {dense - acc:.2f} points against its own dense start at "
    f"{100 * r['target_sparsity']:.0f}% sparsity (target: 2 points)." + _control_line(studies),
    f"* Size of the main job's model: {kib(size['float32_bits'])} KiB as float32, "
    f"{kib(size['dense_bnn_bits'])} KiB as a dense BNN, and **{kib(size['encoded_bits'])} KiB "
    f"as exported** ({size['binary_bits_per_weight']:.3f} bits per binary connection; "
    f"{size['compression_vs_float32']:.1f}x vs float32, {size['compression_vs_dense_bnn']:.2f}x "
    "vs the dense BNN).",
  ]
  ex = m["eval"].get("export")
  if ex:
    lines.append(
      f"  The packed engine reproduces the Flax model's {100 * ex['flax_accuracy']:.2f}% with "
      f"{ex['predictions_differ']:,} of {ex['examples']:,} predictions different "
      "(`python eval.py --workdir=runs/fashion_mnist_mlp_arsp_s0 --export=model.arsp`)."
    )
  agent = r.get("agent", {})
  if agent:
    population = m["config"]["arsp"].get("population")
    lines.append(
      f"* The agent ran {agent['rounds']} rounds ({agent['ppo_updates']} PPO updates)"
      + (
        f", scoring {population} candidate allocations in each of the first "
        f"{agent.get('search_rounds', agent['ppo_updates'])} (the later ones redraw the masks "
        "for its allocation)"
        if population and agent.get("search_rounds", agent["rounds"]) < agent["rounds"]
        else f", scoring {population} candidate allocations in each"
        if population
        else ""
      )
      + ". Its final keep ratios: "
      + ", ".join(f"{x:.3f}" for x in agent.get("final_keep_ratios") or [])
      + "."
    )
  if run.get("timing_note"):
    lines.append(f"* Train time: {run['timing_note']}")
  return "\n".join(lines)


def export_block(m: dict) -> str:
  r, ex = m["results"], m["eval"].get("export")
  size = r["size"]
  per_layer = " and ".join(
    f"{ly['name'].split('/')[0]} {ly['bits_per_weight']:.3f}"
    for ly in size["layers"]
    if ly["binary"]
  )
  text = (
    f"For the main job (`results/main_job/`, {100 * r['target_sparsity']:.0f}% sparsity): "
    f"{kib(size['float32_bits'])} KiB float32, {kib(size['dense_bnn_bits'])} KiB dense BNN, "
    f"**{kib(size['encoded_bits'])} KiB encoded**"
  )
  if ex:
    text += f" ({ex['file_bytes'] / 1024:,.1f} KiB file)"
  text += (
    f" — {per_layer} bits per original weight, {size['binary_bits_per_weight']:.3f} over the "
    f"binary layers, {size['bits_per_weight']:.2f} over all parameters; "
    f"{size['compression_vs_float32']:.1f}x vs float32, {size['compression_vs_dense_bnn']:.2f}x "
    "vs the dense BNN (part of that ratio is the batchnorm fold: 2 instead of 4 floats per "
    "channel)."
  )
  if ex:
    text += (
      f" `eval.py --export` on it gives {100 * ex['flax_accuracy']:.2f}% (Flax) and "
      f"{100 * ex['engine_accuracy']:.2f}% (packed engine): **{ex['predictions_differ']:,} of "
      f"{ex['examples']:,} predictions differ**, logits at most "
      f"{ex['max_abs_logit_diff']:.1e} apart."
    )
  return text


def replace_block(text: str, name: str, body: str) -> str:
  """``text`` with the lines between the markers of block ``name`` replaced by ``body``
  (indented like the opening marker); ValueError when the markers are missing."""
  pat = re.compile(
    rf"^([ \t]*)(<!-- generated:{name}[ \n][^\n]*-->\n)(.*?)^([ \t]*<!-- /generated:{name} -->)",
    re.DOTALL | re.MULTILINE,
  )
  found = pat.search(text)
  if not found:
    raise ValueError(f"no block <!-- generated:{name} ... --> ... <!-- /generated:{name} -->")
  indent = found.group(1)
  lines = [(indent + ln) if ln else ln for ln in body.split("\n")]
  new = indent + found.group(2) + "\n".join(lines) + "\n" + found.group(4)
  return text[: found.start()] + new + text[found.end() :]
