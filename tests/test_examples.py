"""examples/ runs: the user-defined model pruned with the public primitives in its own loop."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
    f"examples.{name}", os.path.join(ROOT, "examples", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # (flax's dataclasses look their module up)
  spec.loader.exec_module(module)
  return module


def test_prune_my_mlp_meets_the_budget_and_learns(capsys):
  example = _load("prune_my_mlp")
  # Layers of at most 1,024 connections compile the masks' small-layer selection only (fast).
  flags = "--steps=400 --dense_steps=200 --prune_every=25 --rounds=6 --population=4"
  out = example.main(flags.split() + ["--sparsity=0.8", "--hidden=32,16", "--features=32"])
  assert out["rounds"] == 6
  assert 0.8 <= out["sparsity"] <= 0.805  # the budget (1 - 0.8), met within rounding
  assert out["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
  printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
  assert len(printed) == 6 and abs(float(printed[-1].split()[3].rstrip(",")) - 0.2) < 0.005
