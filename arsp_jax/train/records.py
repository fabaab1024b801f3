"""What a run records: one record per pruning round, and ``results.json`` at the end.

``round_record`` (the history entry of a round, from the metrics of the step that carried it)
and ``method_results`` (the pruning method's part of ``results.json``) are the two places that
know the round metrics' keys; ``round_scalars`` names them for TensorBoard.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from arsp_jax.export import summary as report
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.train.pipeline import Pipeline


def round_record(m: dict, round_no: int, phase_step: int) -> dict:
  """The history record of pruning round ``round_no`` from its step's host metrics ``m``."""
  return {
    "round": round_no,
    "step": phase_step,
    # accuracy − λ·density of the masks the round started from, on 256 reward images without
    # recovery: a progress figure, not the agent's reward (that is controller/candidate_reward_*)
    "proxy_reward": float(m["proxy_reward"]),
    "accuracy": float(m["round_accuracy"]),
    "density_before": float(m["round_density"]),
    "density_after": float(m["new_density"]),
    "keep_ratios": [float(x) for x in np.asarray(m["keep_ratios"])],
    "layer_density": [float(x) for x in np.asarray(m["layer_density"])],
    # The controller's own metrics (the agent: candidate rewards, policy loss, sigma, ...).
    "controller": {k: float(v) for k, v in m["controller"].items()},
  }


def round_scalars(rec: dict, layer_paths) -> list[tuple[str, float]]:
  """``(TensorBoard tag, value)`` of a round record."""
  out = [
    ("arsp/proxy_reward", rec["proxy_reward"]),
    ("arsp/round_accuracy", rec["accuracy"]),
    ("arsp/sparsity", 1 - rec["density_after"]),
  ]
  out += [(f"controller/{k}", v) for k, v in rec["controller"].items()]
  for name, r, d in zip(layer_paths, rec["keep_ratios"], rec["layer_density"]):
    layer = name.rsplit("/", 1)[0]
    out += [(f"keep_ratio/{layer}", r), (f"layer_sparsity/{layer}", 1 - d)]
  return out


def method_results(pipe: Pipeline, history: dict) -> dict:
  """The pruning method's part of ``results.json`` (empty for a dense run)."""
  cfg, rc = pipe.cfg, pipe.rc
  method = methods_lib.get(cfg.method)
  if method is None:
    return {}
  rounds = history["rounds"]
  searching = rc.controller in ("ppo", "random_search")
  n_search = len(rounds) if rc.search_rounds < 0 else min(len(rounds), rc.search_rounds)
  return {
    "score": rc.score,
    "granularity": cfg.arsp.granularity,
    "controller": rc.controller,
    "schedule": method.schedule,
    "temperature": rc.temperature,
    "target_sparsity": 0.0 if method.controller == "none" else cfg.arsp.target_sparsity,
    "keep_ratios": {
      "layers": [p.rsplit("/", 1)[0] for p in pipe.info.paths],
      "per_round": [r["keep_ratios"] for r in rounds],
    },
    "agent": {
      "rounds": len(rounds),
      "ppo_updates": n_search if rc.controller == "ppo" else 0,
      "search_rounds": n_search if searching else 0,
      "final_mean_proxy_reward": (
        float(np.mean([r["proxy_reward"] for r in rounds[-4:]])) if rounds else None
      ),
      "final_keep_ratios": rounds[-1]["keep_ratios"] if rounds else None,
    },
  }


def finish(pipe: Pipeline, state, history, dense_test_acc, train_seconds) -> dict:
  """``results.json`` of a finished run: final test/validation accuracy, size, history."""
  cfg = pipe.cfg
  test = pipe.evaluate(state, "test")
  val = pipe.evaluate(state, "val")
  summary = pipe.size_summary(state)
  layer_sparsity = {
    l["name"].rsplit("/", 1)[0]: l["sparsity"] for l in summary["layers"] if l["binary"]
  }
  sparsity = summary["sparsity"]
  v = val["accuracy"] if not math.isnan(val["accuracy"]) else test["accuracy"]
  hs = cfg.hyperscore
  results = {
    "dataset": cfg.dataset,
    "model": cfg.model,
    "method": cfg.method,
    "seed": cfg.seed,
    "epochs": cfg.epochs,
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "val_accuracy": val["accuracy"],
    "params": summary["prunable_connections"],
    "kept_connections": summary["kept_connections"],
    "sparsity": sparsity,
    "layer_sparsity": layer_sparsity,
    "train_seconds": train_seconds,
    "devices": pipe.num_devices,
    "processes": jax.process_count(),
    "dense_test_accuracy": dense_test_acc if cfg.method != "dense" else test["accuracy"],
    "hyperscore": report.hyperscore(v, sparsity, hs.beta0, hs.gamma, hs.kappa),
    "size": summary,
    "history": history,
    "config": cfg.to_dict(),
  }
  results.update(method_results(pipe, history))
  return results
