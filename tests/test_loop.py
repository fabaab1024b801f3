"""The whole pipeline on tiny real data: results, checkpoints, resume, init_from, datasets."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from arsp_jax import configs as config_lib
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import evaluate, hooks, loop
from arsp_jax.train import step as step_lib
from arsp_jax.train.state import flatten
from tests import util
from tests.util import tiny_config

RESULT_FIELDS = (
  "dataset",
  "model",
  "method",
  "seed",
  "epochs",
  "test_accuracy",
  "params",
  "sparsity",
  "layer_sparsity",
  "train_seconds",
  "devices",
  "config",
  "score",
  "granularity",
  "keep_ratios",
  "dense_test_accuracy",
  "hyperscore",
  "agent",
)


class Recorder(hooks.Hook):
  """Records what a hook passed to loop.run sees, and which checkpoints exist at that point."""

  def __init__(self, wd):
    self.ck_dir, self.events = os.path.join(wd, "checkpoints"), []

  def saved(self):
    d = self.ck_dir
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []

  def begin_epoch(self, run):
    self.events.append(("begin", run.phase, run.epoch, run.step))

  def after_steps(self, run, w):
    rounds = [rec["step"] for _, rec in w.rounds]
    self.events.append(("steps", w.k, w.global_step, w.log_steps, rounds, self.saved()))

  def end_epoch(self, run, end):
    self.events.append(("end", end.record["phase"], run.epoch, run.global_step, self.saved()))


@pytest.fixture(scope="session")  # built once per worker, not per module visit
def arsp_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("arsp"))
  cfg = tiny_config()
  rec = Recorder(wd)
  res = loop.run(cfg, wd, progress=False, log=lambda *_: None, hooks=[rec])
  return cfg, wd, res, rec.events


def test_hooks_see_every_step_and_epoch_before_it_is_saved(arsp_run):
  events = arsp_run[3]
  begins = [e[1:] for e in events if e[0] == "begin"]
  assert begins == [("dense", 0, 0), ("arsp", 0, 0), ("arsp", 1, 0), ("finetune", 0, 0)]
  steps = [e for e in events if e[0] == "steps"]
  assert [e[1] for e in steps] == [1] * 32 and [e[2] for e in steps] == list(range(1, 33))
  # Log points: every 4 steps of an epoch (log_every) and the steps that carried a round (ARSP
  # steps 5, 9, 13 = global steps 13, 17, 21).
  assert [e[2] for e in steps if e[3]] == [4, 8, 12, 13, 16, 17, 20, 21, 24, 28, 32]
  assert {e[2]: e[4] for e in steps if e[4]} == {13: [5], 17: [9], 21: [13]}
  # Extra hooks run before checkpointing: a step's (and an epoch's) checkpoint is not there yet.
  ends = [e[1:] for e in events if e[0] == "end"]
  assert ends == [
    ("dense", 1, 8, []),
    ("arsp", 1, 16, [8]),
    ("arsp", 2, 24, [8, 16]),
    ("finetune", 1, 32, [8, 16, 24]),
  ]
  assert [e[5] for e in steps if e[2] in (8, 9)] == [[], [8]]


def _final_state(cfg, wd):
  pipe, state, meta = evaluate.load_run(wd)
  return pipe, jax.device_get(state), meta


def test_arsp_results_json(arsp_run):
  cfg, wd, res, _ = arsp_run
  with open(os.path.join(wd, "results.json")) as f:
    on_disk = json.load(f)
  for k in RESULT_FIELDS:
    assert k in on_disk, k
  assert on_disk["method"] == "arsp" and on_disk["devices"] == 1
  assert on_disk["sparsity"] >= 0.7 - 1e-6  # budget mode meets the target
  assert set(on_disk["layer_sparsity"]) == {"fc1", "fc2"}
  assert on_disk["params"] == 784 * 32 + 32 * 32
  assert 100.0 <= on_disk["hyperscore"] < 200.0
  # 16 ARSP steps, a round after every 4 updates: at the start of steps 5, 9 and 13.
  assert on_disk["agent"]["rounds"] == len(on_disk["keep_ratios"]["per_round"]) == 3
  assert on_disk["agent"]["ppo_updates"] == 3  # one update per round
  assert on_disk["dense_test_accuracy"] > 0.2 and on_disk["test_accuracy"] > 0.2  # chance: 0.1
  assert np.isclose(on_disk["test_accuracy"], res["test_accuracy"])
  assert os.listdir(os.path.join(wd, "tb"))  # TensorBoard event files


def test_pruned_weights_exactly_zero_in_checkpoint(arsp_run):
  cfg, wd, res, _ = arsp_run
  pipe, state, meta = _final_state(cfg, wd)
  assert meta["phase"] == "finetune"
  fp, fm = flatten(state.params), flatten(state.masks)
  for p in pipe.info.paths:
    assert np.all(fp[p][fm[p] == 0] == 0.0)  # latent weights zeroed
    assert 0 < fm[p].mean() < 1
  kept = sum(int(fm[p].sum()) for p in pipe.info.paths)
  assert kept == res["kept_connections"]


def test_eval_matches_results(arsp_run):
  cfg, wd, res, _ = arsp_run
  out = evaluate.evaluate_workdir(wd)
  assert np.isclose(out["accuracy"], res["test_accuracy"])
  assert os.path.exists(os.path.join(wd, "eval.json"))
  assert "binary" in evaluate.format_eval(out)


def test_resume_mid_arsp_gives_same_results(arsp_run, tmp_path):
  cfg, wd, res, _ = arsp_run
  wd2 = str(tmp_path / "resumed")
  shutil.copytree(wd, wd2)
  os.remove(os.path.join(wd2, "results.json"))
  ck_dir = os.path.join(wd2, "checkpoints")
  # Checkpoints (numbered by training steps, 8 per epoch): dense epoch 1, ARSP epochs 1-2,
  # fine-tune. Keep only the first ARSP epoch.
  steps = sorted(int(n) for n in os.listdir(ck_dir) if n.isdigit())
  assert steps == [8, 16, 24, 32]
  for step in steps[2:]:
    shutil.rmtree(os.path.join(ck_dir, str(step)))
  assert ckpt_lib.Checkpointer(ck_dir).restore_meta()["phase"] == "arsp"
  logs = []
  res2 = loop.run(cfg, wd2, progress=False, log=logs.append)
  assert any("Resuming" in l for l in logs)
  assert res2["test_accuracy"] == pytest.approx(res["test_accuracy"], abs=1e-6)
  np.testing.assert_allclose(
    res2["keep_ratios"]["per_round"], res["keep_ratios"]["per_round"], atol=1e-6
  )
  assert res2["layer_sparsity"] == pytest.approx(res["layer_sparsity"])
  s1, s2 = _final_state(cfg, wd)[1], _final_state(cfg, wd2)[1]
  for a, b in zip(jax.tree.leaves(s1.masks), jax.tree.leaves(s2.masks)):
    np.testing.assert_array_equal(a, b)


def test_windows_of_steps_give_the_per_step_run(arsp_run, tmp_path):
  """Resumed from the first ARSP epoch with the steps compiled 4 at a time (a lax.scan per
  window) and a checkpoint every 2 steps: windows end at every checkpoint step (so checkpoints
  are taken exactly there) and before every round (a round starts its window), and the run ends
  where the one-step-per-call run ended."""
  cfg, wd, res, _ = arsp_run
  wd2 = str(tmp_path / "windows")
  shutil.copytree(wd, wd2)
  os.remove(os.path.join(wd2, "results.json"))
  ck_dir = os.path.join(wd2, "checkpoints")
  for step in (24, 32):
    shutil.rmtree(os.path.join(ck_dir, str(step)))
  cfg2 = config_lib.apply_overrides(cfg, {"steps_per_window": 4, "checkpoint_every_steps": 2})
  rec = Recorder(wd2)
  res2 = loop.run(cfg2, wd2, progress=False, log=lambda *_: None, hooks=[rec])
  windows = [e for e in rec.events if e[0] == "steps"]
  # 16 steps in windows of 2 (every checkpoint step ends one), each saved at its last step.
  assert [w[1] for w in windows] == [2] * 8
  assert [w[2] for w in windows] == list(range(18, 33, 2))
  assert [w[5][-1] for w in windows[1:]] == list(range(18, 31, 2))  # saved after its window
  # ARSP epoch 2: rounds at phase steps 9 and 13 (global 17, 21), each first in its window.
  assert [(w[2], w[4]) for w in windows[:4] if w[4]] == [(18, [9]), (22, [13])]
  np.testing.assert_allclose(
    res2["keep_ratios"]["per_round"], res["keep_ratios"]["per_round"], atol=1e-6
  )
  assert res2["test_accuracy"] == pytest.approx(res["test_accuracy"], abs=1e-6)
  s1, s2 = _final_state(cfg, wd)[1], _final_state(cfg2, wd2)[1]
  for a, b in zip(jax.tree.leaves(s1.masks), jax.tree.leaves(s2.masks)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
  "first, spe, per_window, cuts, expected",
  [
    (1, 8, 4, (), [4, 4]),
    (3, 8, 4, (), [2, 4]),  # a resumed epoch cuts where an uninterrupted one does
    (1, 10, 4, (), [4, 4, 2]),  # the epoch's end ends a window
    (1, 8, 4, (5,), [4, 1, 3]),  # a cut (before a round, at a checkpoint step)
    (1, 8, 100, (2, 6), [2, 4, 2]),
  ],
)
def test_window_lengths(first, spe, per_window, cuts, expected):
  assert step_lib.window_lengths(first, spe, per_window, lambda s: s in cuts) == expected


def test_refuses_to_resume_with_other_config(arsp_run):
  cfg, wd, _, _ = arsp_run
  other = config_lib.apply_overrides(cfg, {"model_kwargs.hidden": (16, 16)})
  with pytest.raises(config_lib.ConfigError, match="new --workdir"):
    loop.run(other, wd, progress=False, log=lambda *_: None)


def test_dense_then_init_from(tmp_path):
  dense_wd = str(tmp_path / "dense")
  cfg = tiny_config(method="dense")
  res = loop.run(cfg, dense_wd, progress=False, log=lambda *_: None)
  assert res["sparsity"] == 0.0 and res["method"] == "dense"
  assert all(v == 0.0 for v in res["layer_sparsity"].values())
  cfg2 = tiny_config(init_from=dense_wd)
  logs = []
  res2 = loop.run(cfg2, str(tmp_path / "arsp"), progress=False, log=logs.append)
  assert any("Initialised from" in l for l in logs)
  assert res2["dense_test_accuracy"] == pytest.approx(res["test_accuracy"], abs=1e-6)
  assert not any(e["phase"] == "dense" for e in res2["history"]["epochs"])
  assert res2["sparsity"] >= 0.7 - 1e-6


@pytest.mark.skipif(
  not os.path.exists(os.path.join(util.SYSTEM_FMNIST, util.FMNIST_FILES["train_images"])),
  reason="Debian's dataset-fashion-mnist is not installed",
)
def test_arsp_on_real_fashion_mnist_subset(tmp_path):
  # 640 real training images (512 train + 128 validation: 8 steps of 64) and 128 test images;
  # the same shapes as tiny_config, so the compiled programs are shared with the other tests.
  data_dir = util.write_fmnist_subset(tmp_path / "fm", n_train=640, n_test=128)
  cfg = tiny_config(dataset="fashion_mnist", data_dir=data_dir, epochs=2)
  cfg.dataset_kwargs = ml_collections.ConfigDict()
  res = loop.run(cfg, str(tmp_path / "wd"), progress=False, log=lambda *_: None)
  assert res["dataset"] == "fashion_mnist" and res["params"] == 784 * 32 + 32 * 32
  assert res["sparsity"] >= 0.7 - 1e-6
  assert res["dense_test_accuracy"] > 0.5  # real images: a learnable signal (chance 0.1)
  assert res["test_accuracy"] > 0.4


def test_cifar10_canonical_layout_end_to_end(tmp_path):
  root = util.write_cifar_dir(str(tmp_path / "c"), per_batch=16, n_test=32)
  cfg = config_lib.apply_overrides(
    config_lib.get_config("cifar10"),
    {
      "data_dir": root,
      "val_size": 16,
      "model": "mlp",
      "model_kwargs.hidden": (16,),
      "batch_size": 16,
      "eval_batch_size": 16,
      "epochs": 1,
      "method": "dense",
      "num_devices": 1,
      "lr_schedule": "constant",
    },
  )
  res = loop.run(cfg, str(tmp_path / "wd"), progress=False, log=lambda *_: None)
  # (The CNN families are exercised in test_models.py; here the data path is what is tested.)
  assert res["dataset"] == "cifar10" and res["params"] == 32 * 32 * 3 * 16
  assert 0.0 <= res["test_accuracy"] <= 1.0 and res["params"] > 0
  assert len(res["history"]["epochs"]) == 1


def test_imagenet2012_under_tfds_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = config_lib.apply_overrides(
    config_lib.get_config("imagenet2012"),
    {
      "data_dir": str(tmp_path),
      "val_size": 8,
      "model": "mlp",
      "model_kwargs.hidden": (16,),
      "dataset_kwargs.image_size": 16,
      "batch_size": 8,
      "eval_batch_size": 8,
      "epochs": 1,
      "method": "dense",
      "num_devices": 1,
      "lr_schedule": "constant",
    },
  )
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    res = loop.run(cfg, str(tmp_path / "wd"), progress=False, log=lambda *_: None)
  assert res["dataset"] == "imagenet2012" and res["params"] == 16 * 16 * 3 * 16
  assert res["history"]["epochs"][0]["phase"] == "dense"
