"""The loop's bookkeeping for a window of k steps (a compiled multi-step call hands over k steps'
metrics at once: steps_per_window > 1): the same books whatever the window size."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arsp_jax.train import loop
from arsp_jax.train.run_state import EpochStats, RunState

SPE = 8  # steps per epoch


def step_metrics(phase_step):
  """Metrics of one ARSP step (step 3 is non-finite); round fields vary with the step."""
  x = np.float32(phase_step)
  return {
    "finite": np.bool_(phase_step != 3),
    "loss": x / 10,
    "accuracy": x / 100,
    "proxy_reward": x,
    "round_accuracy": x / 2,
    "round_density": 1 - x / 100,
    "new_density": 1 - x / 50,
    "keep_ratios": np.full(2, x / 20, np.float32),
    "layer_density": np.full(2, x / 30, np.float32),
    "controller": {"policy_loss": x, "sigma": x / 3},  # a controller's own metrics (nested)
  }


def stack(ms):
  """Per-step metrics stacked over the steps, on the device (as a compiled k-step call returns)."""
  return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *ms)


def new_run():
  cfg = ml_collections.ConfigDict({"log_every": 4, "arsp": {"prune_every": 2}})
  pipe = types.SimpleNamespace(
    cfg=cfg, steps_per_epoch=SPE, phases=[("dense", 1), ("arsp", 2), ("finetune", 1)]
  )
  # ARSP epoch 2: phase steps 9..16.
  run = RunState(pipe=pipe, config_json={}, phase_idx=1, epoch=1)
  run.stats = EpochStats()
  return run


def record_epoch(k):
  run, seen = new_run(), []
  for first in range(1, SPE + 1, k):
    ms = [step_metrics(SPE + s) for s in range(first, first + k)]
    run.step += k
    w = loop.record_steps(run, stack(ms), k)
    assert w.k == k and w.global_step == 8 + SPE + run.step
    assert w.at_epoch_end == (run.step == SPE)
    seen += [(w.global_step_at(j), float(w.at(j)["loss"])) for j in w.log_steps]
    seen += [("round", w.global_step_at(j), rec["round"]) for j, rec in w.rounds]
  return run, seen


@pytest.mark.parametrize("k", [2, 4])
def test_a_window_of_k_steps_keeps_the_same_books_as_k_single_steps(k):
  one, seen_one = record_epoch(1)
  many, seen_many = record_epoch(k)
  assert sorted(seen_many, key=str) == sorted(seen_one, key=str)
  # Log points: in-epoch steps 4 and 8, and every step that carried a round (phase steps 9, 11,
  # 13, 15: (p - 1) % prune_every == 0).
  assert [s for s, _ in [x for x in seen_one if x[0] != "round"]] == [17, 19, 20, 21, 23, 24]
  assert many.history == one.history and len(one.history["rounds"]) == 4
  assert [r["step"] for r in one.history["rounds"]] == [9, 11, 13, 15]
  assert one.history["rounds"][1]["controller"] == pytest.approx(
    {"policy_loss": 11, "sigma": 11 / 3}
  )
  a, b = many.stats, one.stats
  assert (a.loss, a.accuracy, a.n) == pytest.approx((b.loss, b.accuracy, b.n)) and b.n == 6
  assert a.nonfinite_count() == b.nonfinite_count() == 0  # (phase step 3 is in epoch 1)


def test_the_first_non_finite_step_of_a_window_is_found():
  run = new_run()
  run.epoch = 0  # ARSP epoch 1: phase steps 1..8, step 3 non-finite
  ms = [step_metrics(s) for s in range(1, 5)]
  run.step = 4
  loop.record_steps(run, stack(ms), 4)
  assert run.stats.nonfinite_count() == 1 and run.stats.first_nonfinite_step() == 3
  assert run.stats.n == 1  # the log point (step 4) is finite; step 3 (a round) is not counted
