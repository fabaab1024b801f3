"""Reliability (issue 6): crash-safe resume, pre-emption, corrupt checkpoints, non-finite steps,
and bad input that stops with one clear paragraph and leaves existing files untouched.

The crash test runs ``train.py`` in subprocesses that really die (SIGKILL / SIGTERM) at fixed
points (``tests/fault_launcher.py``: a hook through ``loop.run(hooks=...)``, or orbax patched
to die mid-save), and checks that the resumed run ends with the same
results.json and masks as an uninterrupted one. The bad-input table runs ``train.py``'s main in
this process (no JAX start-up per case); two cases run as real processes.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from arsp_jax import cli
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import loop
from tests import fault_launcher, util
from tests.util import TINY_SETS, subprocess_env, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests/util.py's tiny_config as train.py flags (the subprocesses see 1 CPU device).
TINY_FLAGS = ["--dataset=synthetic", "--progress=false"] + [
  a for kv in TINY_SETS for a in ("--set", kv)
]


def test_tiny_flags_match_tiny_config(train_main, tmp_path):
  from absl import flags

  flags.FLAGS.unparse_flags()
  flags.FLAGS(["train.py", *TINY_FLAGS])
  assert cli.config_from_flags().to_dict() == tiny_config().to_dict()


def run_train(wd, fault=None, *extra, timeout=300):
  """train.py in a new process; with ``fault``, through tests/fault_launcher.py."""
  cmd = ["-m", "tests.fault_launcher", f"--fault={fault}"] if fault else ["train.py"]
  return subprocess.run(
    [sys.executable, *cmd, f"--workdir={wd}", *TINY_FLAGS, *extra],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def ck_steps(wd):
  d = os.path.join(wd, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def raw_state(wd, step=None):
  """The saved state of checkpoint ``step`` (default: latest) as nested dicts, no template."""
  ck = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints"))
  step = ck.latest_step() if step is None else step
  out = ck.manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
  )
  ck.close()
  return jax.device_get(out["state"]), dict(out["meta"])


def results(wd):
  with open(os.path.join(wd, "results.json")) as f:
    return json.load(f)


def snapshot(path):
  """{relative path: sha1} of every file under ``path`` (plus directories), to prove nothing
  changed."""
  out = {}
  for root, dirs, files in os.walk(path):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), path) + "/"] = "dir"
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, path)] = hashlib.sha1(fh.read()).hexdigest()
  return out


def assert_same_results(got, ref, wd_got, wd_ref):
  assert got["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1e-6)
  assert got["dense_test_accuracy"] == pytest.approx(ref["dense_test_accuracy"], abs=1e-6)
  assert got["sparsity"] == pytest.approx(ref["sparsity"], abs=1e-9)
  assert got["layer_sparsity"] == pytest.approx(ref["layer_sparsity"], abs=1e-9)
  np.testing.assert_allclose(
    got["keep_ratios"]["per_round"], ref["keep_ratios"]["per_round"], atol=1e-6
  )
  assert got["agent"]["rounds"] == ref["agent"]["rounds"] == 3
  # No double counting after resumes: one record per epoch and per round.
  assert [(e["phase"], e["epoch"]) for e in got["history"]["epochs"]] == [
    (e["phase"], e["epoch"]) for e in ref["history"]["epochs"]
  ]
  assert [r["step"] for r in got["history"]["rounds"]] == [5, 9, 13]
  for a, b in zip(got["history"]["epochs"], ref["history"]["epochs"]):
    assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
  s1, s2 = raw_state(wd_got)[0], raw_state(wd_ref)[0]
  for a, b in zip(jax.tree.leaves(s1["masks"]), jax.tree.leaves(s2["masks"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
    np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------
# Crash-safe resume: a chain of real processes killed at different points.
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_to_the_same_results(done_run, tmp_path):
  """Checkpoints of the tiny run (8 steps/epoch), numbered by global step: 8 = dense epoch 1,
  16 / 24 = ARSP epochs 1 / 2, 32 = fine-tuning; ARSP rounds at the start of ARSP steps 5, 9, 13.
  Each process below is started with the same command (plus a fault) on the same workdir.

  The reference is the uninterrupted run of this process (same config, 1 device of the 8 fake
  ones): same seed and device count give identical results in and out of pytest."""
  ref_wd, wd = done_run[0], str(tmp_path / "crashed")
  ref = results(ref_wd)
  assert ck_steps(ref_wd) == [8, 16, 24, 32]

  # 1. SIGKILL in the middle of the first dense epoch: nothing to resume from yet.
  p = run_train(wd, "kill:dense:1:3")
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert ck_steps(wd) == [] and not os.path.exists(os.path.join(wd, "results.json"))

  # 2. SIGKILL mid ARSP epoch, after the step that carried the first pruning round (step 5):
  #    the round's masks / agent update are lost with the process; the dense checkpoint stays.
  p = run_train(wd, "kill:arsp:1:6")
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert ck_steps(wd) == [8]

  # 3. SIGTERM (pre-emption) at ARSP epoch 2, step 3: checkpoint 19 written mid-epoch, exit 143.
  p = run_train(wd, "term:arsp:2:3")
  assert p.returncode == cli.EXIT_PREEMPTED, p.stderr[-2000:]
  assert "pre-empted" in p.stderr and "Traceback" not in p.stderr
  assert ck_steps(wd) == [8, 16, 19]
  meta = raw_state(wd)[1]
  assert (meta["phase"], meta["phase_epoch"], meta["step_in_epoch"]) == ("arsp", 1, 3)
  assert len(meta["history"]["rounds"]) == 2  # rounds at ARSP steps 5 and 9

  # 4. SIGKILL while checkpoint 24 (end of ARSP) is being written: it never becomes visible.
  p = run_train(wd, "kill-save:1")
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert "Resuming" in p.stdout and "1 epoch(s) and 3 step(s) done" in p.stdout
  assert ck_steps(wd) == [8, 16, 19]
  assert glob.glob(os.path.join(wd, "checkpoints", "24.orbax-checkpoint-tmp*"))

  # 5. Mid-epoch checkpoints every 2 steps (a resumable setting), SIGKILL in fine-tuning step 5.
  p = run_train(wd, "kill:finetune:1:5", "--checkpoint_every_steps=2")
  assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
  assert ck_steps(wd) == [8, 16, 19, 20, 22, 24, 26, 28]
  assert not glob.glob(os.path.join(wd, "checkpoints", "*tmp*"))  # the killed save is cleaned
  # ... and the latest checkpoint gets damaged (truncated array file).
  data = glob.glob(os.path.join(wd, "checkpoints", "28", "state", "ocdbt.process_0", "d", "*"))
  with open(max(data, key=os.path.getsize), "r+b") as f:
    f.truncate(16)

  # 6. The same command again: checkpoint 28 is reported and moved aside, 26 is resumed.
  p = run_train(wd)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "warning: checkpoint 28" in p.stdout and "28.corrupt" in p.stdout
  assert "finetune, 0 epoch(s) and 2 step(s) done" in p.stdout
  assert os.path.isdir(os.path.join(wd, "checkpoints", "28.corrupt"))
  assert_same_results(results(wd), ref, wd, ref_wd)


def test_preempted_process_resumes_to_the_same_results(done_run, tmp_path):
  """`make test`'s real-process pre-emption (the chain above and the 2-process run are in
  `make test-all`): from the finished run's checkpoint 16 (end of ARSP epoch 1), train.py is
  pre-empted by SIGTERM at ARSP epoch 2 step 3, writes checkpoint 19 and exits 143; the same
  command again resumes there and ends with the uninterrupted run's results."""
  ref_wd = done_run[0]
  wd = copy_run(done_run, tmp_path)
  os.remove(os.path.join(wd, "results.json"))
  for step in (24, 32):
    shutil.rmtree(os.path.join(wd, "checkpoints", str(step)))
  p = run_train(wd, "term:arsp:2:3")
  assert p.returncode == cli.EXIT_PREEMPTED, p.stderr[-2000:]
  assert "pre-empted" in p.stderr and "Traceback" not in p.stderr
  assert ck_steps(wd) == [8, 16, 19]
  p = run_train(wd)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Resuming" in p.stdout and "1 epoch(s) and 3 step(s) done" in p.stdout
  assert_same_results(results(wd), results(ref_wd), wd, ref_wd)


# ----------------------------------------------------------------------------
# In-process: corrupt checkpoints, non-finite steps, signal handler hygiene.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="session")  # built once per worker, not per module visit
def done_run(tmp_path_factory):
  """A finished tiny run in this process (same programs as test_loop.py: compile cache)."""
  wd = str(tmp_path_factory.mktemp("done") / "wd")
  before = signal.getsignal(signal.SIGTERM)
  res = loop.run(tiny_config(), wd, progress=False, log=lambda *_: None)
  assert signal.getsignal(signal.SIGTERM) is before  # handler restored
  return wd, res


def copy_run(done_run, tmp_path, name="wd"):
  dst = str(tmp_path / name)
  shutil.copytree(done_run[0], dst)
  return dst


def corrupt(wd, step):
  data = glob.glob(os.path.join(wd, "checkpoints", str(step), "state", "ocdbt.process_0", "d", "*"))
  with open(max(data, key=os.path.getsize), "r+b") as f:
    f.seek(8)
    f.write(b"\x00garbage\xff" * 8)


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(done_run, tmp_path):
  wd = copy_run(done_run, tmp_path)
  assert ck_steps(wd) == [8, 16, 24, 32]
  corrupt(wd, 32)
  pipe = loop.Pipeline(tiny_config(), wd, progress=False)
  ck = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints"))
  logs = []
  step, meta, state = ck.restore_latest(lambda m: pipe.fresh_state(m["phase"]), log=logs.append)
  assert step == 24 and meta["phase"] == "arsp" and meta["phase_epoch"] == 2
  assert len(logs) == 1 and "checkpoint 32" in logs[0] and "32.corrupt" in logs[0]
  assert ck_steps(wd) == [8, 16, 24] and ck.latest_step() == 24
  assert os.path.isdir(os.path.join(wd, "checkpoints", "32.corrupt"))
  ck.close()


def test_eval_of_a_damaged_latest_checkpoint_is_a_user_error(done_run, tmp_path, capsys):
  wd = copy_run(done_run, tmp_path)
  corrupt(wd, 32)
  before = snapshot(wd)
  assert eval_main(wd) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: Checkpoint 32 in") and "cannot be read" in err, err
  assert "Traceback" not in err and snapshot(wd) == before


def test_no_readable_checkpoint_is_an_error_and_renames_nothing(
  done_run, tmp_path, capsys, train_main
):
  wd = copy_run(done_run, tmp_path)
  for s in ck_steps(wd):
    corrupt(wd, s)
  os.remove(os.path.join(wd, "results.json"))
  before = snapshot(wd)
  assert train_main(f"--workdir={wd}", *TINY_FLAGS) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: No checkpoint in") and "can be read" in err, err
  assert "new --workdir" in err and "Traceback" not in err
  assert snapshot(wd) == before


def test_non_finite_loss_stops_naming_step_and_checkpoint(tmp_path):
  # A learning rate that really diverges: the full-precision output layer overflows.
  wd = str(tmp_path / "wd")
  cfg = tiny_config(method="dense", epochs=2, learning_rate=1e38)
  with pytest.raises(loop.TrainingError) as e:
    loop.run(cfg, wd, progress=False, log=lambda *_: None)
  msg = str(e.value)
  assert "Non-finite loss or gradient at dense step" in msg
  assert "epoch 1" in msg and "last good checkpoint is none" in msg and "nan_policy=skip" in msg
  assert ck_steps(wd) == [] and not os.path.exists(os.path.join(wd, "results.json"))


@pytest.mark.parametrize("per_window", [1, 4])
def test_non_finite_input_stops_with_the_exact_step(tmp_path, monkeypatch, per_window):
  # NaN images at dense epoch 2 (epoch 1 from 0) step 3: step 11 of the phase; checkpoint 8.
  # With windows of 4 steps the run stops after the window (steps 9-12), still naming step 11.
  fault_launcher.nan_images_at(monkeypatch, epoch=1, step=3)
  wd = str(tmp_path / "wd")
  cfg = tiny_config(method="dense", epochs=2, steps_per_window=per_window)
  with pytest.raises(loop.TrainingError) as e:
    loop.run(cfg, wd, progress=False, log=lambda *_: None)
  msg = str(e.value)
  assert "dense step 11 (epoch 2, step 3 of 8)" in msg and f"#8 in {wd}" in msg
  assert ck_steps(wd) == [8]
  state = raw_state(wd)[0]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_nan_policy_skip_skips_the_step_and_counts_it(tmp_path, monkeypatch):
  fault_launcher.nan_images_at(monkeypatch, epoch=0, step=3)
  wd = str(tmp_path / "wd")
  logs = []
  res = loop.run(
    tiny_config(method="dense", nan_policy="skip"), wd, progress=False, log=logs.append
  )
  assert res["history"]["epochs"][0]["skipped_steps"] == 1
  assert any("1 non-finite step(s) skipped" in l for l in logs)
  assert res["test_accuracy"] > 0.15  # it trained on the other 7 steps
  state = raw_state(wd)[0]
  assert int(state["step"]) == 8  # the step counter still advanced
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_dense_pipeline_one_vs_eight_devices(tmp_path):
  """Same seed on 1 and 8 (fake) devices: the same results to float tolerance (the ARSP step's
  1-vs-8 equivalence, masks and agent included, is tested step by step in test_step.py)."""
  out = {}
  for n in (1, 8):
    out[n] = loop.run(
      tiny_config(method="dense", num_devices=n),
      str(tmp_path / str(n)),
      progress=False,
      log=lambda *_: None,
    )
  assert out[8]["devices"] == 8
  assert out[8]["test_accuracy"] == pytest.approx(out[1]["test_accuracy"], abs=1.5 / 128)
  assert out[8]["history"]["epochs"][0]["train_loss"] == pytest.approx(
    out[1]["history"]["epochs"][0]["train_loss"], abs=1e-4
  )
  s1, s8 = raw_state(str(tmp_path / "1"))[0], raw_state(str(tmp_path / "8"))[0]
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s8["params"])):
    np.testing.assert_allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------
# Bad input: one paragraph on stderr, exit 2, nothing written or changed.
# ----------------------------------------------------------------------------


def eval_main(workdir, data_dir=None, export=None, overwrite=False):
  """``eval.py``'s main body in this process (eval.py's flags clash with train.py's)."""
  from arsp_jax.train import evaluate

  with pytest.raises(SystemExit) as exc:
    with cli.user_errors():
      evaluate.evaluate_workdir(workdir, data_dir=data_dir, export=export, overwrite=overwrite)
  return exc.value.code


# Workdir / data factories: (workdir, data_dir or None, lock or None). ``lock()`` is applied
# after the "before" snapshot and returns the function that undoes it.


def _new_wd(tmp_path, done_run):
  return str(tmp_path / "new"), None, None


def _copied_wd(tmp_path, done_run):
  return copy_run(done_run, tmp_path), None, None


def _wd_without_config(tmp_path, done_run):
  wd = copy_run(done_run, tmp_path)
  os.remove(os.path.join(wd, "config.json"))
  return wd, None, None


def _wd_bad_config_json(tmp_path, done_run):
  wd = copy_run(done_run, tmp_path)
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write('{"dataset": "synth')
  return wd, None, None


def _wd_config_is_a_directory(tmp_path, done_run):
  wd = copy_run(done_run, tmp_path)
  os.remove(os.path.join(wd, "config.json"))
  os.mkdir(os.path.join(wd, "config.json"))  # unreadable even for root
  return wd, None, None


def _wd_is_a_file(tmp_path, done_run):
  p = tmp_path / "file"
  p.write_text("not a directory\n")
  return str(p), None, None


def _wd_unreadable(tmp_path, done_run):
  wd = copy_run(done_run, tmp_path)
  os.chmod(wd, 0)
  readable = os.access(wd, os.R_OK)  # root ignores permissions
  os.chmod(wd, 0o755)
  if readable:
    pytest.skip("running as root: chmod 000 does not make a directory unreadable")

  def lock():
    os.chmod(wd, 0)
    return lambda: os.chmod(wd, 0o755)

  return wd, None, lock


def _empty_data_dir(tmp_path, done_run):
  d = tmp_path / "empty"
  d.mkdir()
  return str(tmp_path / "new"), str(d), None


def _empty_fmnist_files(tmp_path, done_run):
  d = tmp_path / "fm"
  d.mkdir()
  for name in util.FMNIST_FILES.values():
    (d / name).write_bytes(b"")
  return str(tmp_path / "new"), str(d), None


def _corrupt_fmnist_files(tmp_path, done_run):
  d = tmp_path / "fm"
  d.mkdir()
  for name in util.FMNIST_FILES.values():
    util.write_idx(d / name, [[1, 2], [3, 4]], magic=1234)
  return str(tmp_path / "new"), str(d), None


def _fmnist_32x32(tmp_path):
  d = tmp_path / "fm32"
  d.mkdir()
  rng = np.random.default_rng(0)
  for key, name in util.FMNIST_FILES.items():
    n = 640 if key.startswith("train") else 128
    arr = rng.integers(0, 256, (n, 32, 32)) if key.endswith("images") else rng.integers(0, 10, n)
    util.write_idx(d / name, arr)
  return str(d)


def _fmnist_files(tmp_path, train_shape, test_shape, name="fmx"):
  d = tmp_path / name
  d.mkdir()
  rng = np.random.default_rng(0)
  for key, fname in util.FMNIST_FILES.items():
    shape = train_shape if key.startswith("train") else test_shape
    arr = rng.integers(0, 256, shape) if key.endswith("images") else rng.integers(0, 10, shape[0])
    util.write_idx(d / fname, arr)
  return str(d)


def _fmnist_test_32x32(tmp_path, done_run):
  return str(tmp_path / "new"), _fmnist_files(tmp_path, (64, 28, 28), (16, 32, 32)), None


def _fmnist_0x0(tmp_path, done_run):
  return str(tmp_path / "new"), _fmnist_files(tmp_path, (64, 0, 0), (16, 0, 0)), None


def _fmnist_no_images(tmp_path, done_run):
  return str(tmp_path / "new"), _fmnist_files(tmp_path, (0, 28, 28), (0, 28, 28)), None


BASIC = ["--progress=false"]

# (name, workdir factory, base flags, extra flags, words the message must hold). Values that
# TINY_FLAGS sets with --set are overridden with --set (it is applied after the named flags).
TRAIN_CASES = [
  ("unknown dataset", _new_wd, BASIC, ["--dataset=no_such_dataset"], ["no_such_dataset"]),
  ("unknown model", _new_wd, TINY_FLAGS, ["--model=bogus"], ["bogus", "mlp"]),
  ("unknown method", _new_wd, TINY_FLAGS, ["--method=bogus"], ["--method", "arsp"]),
  ("unknown score", _new_wd, TINY_FLAGS, ["--set", "arsp.score=bogus"], ["--score", "magnitude"]),
  (
    "sparsity 1",
    _new_wd,
    TINY_FLAGS,
    ["--set", "arsp.target_sparsity=1.0"],
    ["--target_sparsity", "[0, 1)"],
  ),
  (
    "sparsity 1.5",
    _new_wd,
    TINY_FLAGS,
    ["--set", "arsp.target_sparsity=1.5"],
    ["--target_sparsity", "[0, 1)"],
  ),
  ("negative epochs", _new_wd, TINY_FLAGS, ["--set", "epochs=-1"], ["--epochs", "non-negative"]),
  ("negative prune epochs", _new_wd, TINY_FLAGS, ["--set", "arsp.epochs=-2"], ["--prune_epochs"]),
  (
    "batch not divisible by devices",
    _new_wd,
    TINY_FLAGS,
    ["--set", "num_devices=0", "--set", "batch_size=60"],
    ["--batch_size=60", "(8)"],
  ),
  ("unknown nan policy", _new_wd, TINY_FLAGS, ["--nan_policy=ignore"], ["nan_policy", "skip"]),
  (
    "negative checkpoint interval",
    _new_wd,
    TINY_FLAGS,
    ["--checkpoint_every_steps=-1"],
    ["checkpoint_every_steps"],
  ),
  ("missing data files", _empty_data_dir, BASIC, ["--dataset=cifar10"], ["cifar-10-batches-py"]),
  ("empty data files", _empty_fmnist_files, BASIC, ["--dataset=fashion_mnist"], ["corrupt"]),
  ("corrupt data files", _corrupt_fmnist_files, BASIC, ["--dataset=fashion_mnist"], ["magic"]),
  (
    "workdir of another config",
    _copied_wd,
    TINY_FLAGS,
    ["--set", "model_kwargs.hidden=(16,16)"],
    ["different configuration", "model_kwargs.hidden", "new --workdir"],
  ),
  (
    "workdir of another model, no config.json",
    _wd_without_config,
    TINY_FLAGS,
    ["--set", "model_kwargs.hidden=(16,16)"],
    ["different configuration", "new --workdir"],
  ),
  (
    "workdir with damaged config.json",
    _wd_bad_config_json,
    TINY_FLAGS,
    [],
    ["config.json cannot be read", "new --workdir"],
  ),
  (
    "workdir with unreadable config.json",
    _wd_config_is_a_directory,
    TINY_FLAGS,
    [],
    ["config.json cannot be read", "IsADirectoryError"],
  ),
  ("workdir is a file", _wd_is_a_file, TINY_FLAGS, [], ["not a directory"]),
  (
    "finished run, another --data_dir",
    _copied_wd,
    TINY_FLAGS,
    ["--data_dir=/elsewhere"],
    [
      "finished run with a different configuration",
      "data_dir: '' -> '/elsewhere'",
      "new --workdir",
    ],
  ),
  (
    "train and test images of different shapes",
    _fmnist_test_32x32,
    BASIC,
    ["--dataset=fashion_mnist"],
    ["differ in shape", "(28, 28, 1)", "(32, 32, 1)"],
  ),
  ("IDX files of 0x0 images", _fmnist_0x0, BASIC, ["--dataset=fashion_mnist"], ["(0, 0, 1)"]),
  (
    "empty dataset, --val_size=0",
    _fmnist_no_images,
    BASIC,
    ["--dataset=fashion_mnist", "--val_size=0"],
    ["training split", "is empty"],
  ),
  (
    "model too deep for 1x1 images",
    _new_wd,
    BASIC,
    ["--dataset=synthetic", "--model=vgg_small", "--set", "dataset_kwargs.image_shape=(1,1,1)"],
    ["--model=vgg_small", "(1, 1, 1)", "too small"],
  ),
  (
    "model over 2^30 parameters",
    _new_wd,
    BASIC,
    ["--dataset=synthetic", "--set", "model_kwargs.hidden=(65536,65536)"],
    ["parameters (at most 1,073,741,824)"],
  ),
  (
    "channel multiple leaves nothing to prune",
    _new_wd,
    TINY_FLAGS,
    ["--granularity=channel", "--channel_multiple=64"],
    ["--channel_multiple=64", "nothing would be pruned"],
  ),
  ("unreadable workdir", _wd_unreadable, TINY_FLAGS, [], ["permission denied", "chmod"]),
]


@pytest.mark.parametrize(
  "name, make_wd, base, args, needles", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES]
)
def test_train_bad_input(
  name, make_wd, base, args, needles, done_run, tmp_path, capsys, train_main, monkeypatch
):
  wd, data_dir, lock = make_wd(tmp_path, done_run)
  existed = os.path.exists(wd)
  before = snapshot(wd) if os.path.isdir(wd) else None
  argv = [f"--workdir={wd}", *base, *args]
  if data_dir:
    monkeypatch.setenv("ARSP_DATA_DIR", data_dir)
    argv.append(f"--data_dir={data_dir}")
  unlock = lock() if lock else None
  try:
    code = train_main(*argv)
  finally:
    if unlock:
      unlock()
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("error: ") and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1, err  # one paragraph
  for n in needles:
    assert n in err, (n, err)
  if not existed:
    assert not os.path.exists(wd), "a refused run created its workdir"
  elif before is not None:
    assert snapshot(wd) == before, "a refused run changed its workdir"


def test_eval_bad_input(done_run, tmp_path, capsys):
  # A workdir with a config but no checkpoint; --export must not create its file.
  wd = str(tmp_path / "nock")
  os.makedirs(wd)
  shutil.copy(os.path.join(done_run[0], "config.json"), wd)
  out = str(tmp_path / "model.arsp")
  assert eval_main(wd, export=out) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "checkpoints" in err and "train.py" in err, err
  assert not os.path.exists(out) and os.listdir(wd) == ["config.json"]

  # A Fashion-MNIST run evaluated on a folder of 32x32 images: the model does not fit them.
  wd = copy_run(done_run, tmp_path, "fm")
  cfg_path = os.path.join(wd, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg.update(dataset="fashion_mnist", dataset_kwargs={})
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  before = snapshot(wd)
  d32 = _fmnist_32x32(tmp_path)
  assert eval_main(wd, data_dir=d32) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: Checkpoint 32") and "different model" in err, err
  assert "(784, 32) in the checkpoint but (1024, 32) in this model" in err
  assert "Traceback" not in err and snapshot(wd) == before


def test_a_finished_run_rerun_prints_its_results_and_writes_nothing(
  done_run, tmp_path, capsys, train_main
):
  wd = copy_run(done_run, tmp_path)
  before = snapshot(wd)
  # keys that only say how a run executes may differ (FINISHED_IGNORED_KEYS)
  assert train_main(f"--workdir={wd}", *TINY_FLAGS, "--set", "keep_checkpoints=3") == 0
  out = capsys.readouterr().out
  assert "holds this run, finished" in out and "final test accuracy" in out, out
  assert snapshot(wd) == before


def test_export_never_clobbers(done_run, tmp_path, capsys):
  """--export refuses an existing file (unless --overwrite), anything that is not a regular
  file (FIFO, device) even with --overwrite, and the run directory's own files; all before
  the evaluation, so nothing is written (eval.json neither)."""
  wd = copy_run(done_run, tmp_path)
  before = snapshot(wd)
  existing = tmp_path / "model.arsp"
  existing.write_bytes(b"keep me")
  fifo = tmp_path / "fifo"
  os.mkfifo(fifo)
  cases = [
    (str(existing), False, ["exists", "--overwrite"]),
    (str(fifo), True, ["not a regular file"]),
    ("/dev/null", True, ["not a regular file"]),
    (os.path.join(wd, "config.json"), True, ["file of the run directory"]),
    (os.path.join(wd, "checkpoints", "new.arsp"), True, ["file of the run directory"]),
    (os.path.join(wd, "results.json"), False, ["file of the run directory"]),
    (str(tmp_path), False, ["is a directory"]),
    (str(tmp_path / "nowhere" / "m.arsp"), False, ["does not exist"]),
  ]
  for path, overwrite, needles in cases:
    assert eval_main(wd, export=path, overwrite=overwrite) == 2, path
    err = capsys.readouterr().err
    assert err.startswith("error: --export=") and "Traceback" not in err, err
    for n in needles:
      assert n in err, (n, err)
  assert existing.read_bytes() == b"keep me"
  assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
  assert snapshot(wd) == before
  from arsp_jax.train import evaluate  # noqa: PLC0415

  assert evaluate.check_export_path(str(existing), overwrite=True) == str(existing)


@pytest.mark.parametrize(
  "content, needles",
  [
    ('{"dataset": "synth', ["config.json cannot be read", "JSONDecodeError"]),
    ("[1, 2]", ["does not hold a configuration"]),
    ('{"dataset": "synthetic", "epochs": "ten"}', ["does not hold a valid", "--epochs"]),
    ('{"dataset": "synthetic", "model_kwargs": {"hidden": [[1]]}}', ["model_kwargs.hidden"]),
  ],
)
def test_a_corrupt_config_json_is_named_by_eval_and_init_from(
  done_run, tmp_path, capsys, train_main, content, needles
):
  wd = copy_run(done_run, tmp_path)
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write(content)
  before = snapshot(wd)
  assert eval_main(wd) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "Traceback" not in err, err
  assert all(n in err for n in needles), err
  new = str(tmp_path / "new")
  code = train_main(f"--workdir={new}", *TINY_FLAGS, f"--init_from={wd}", "--set", "epochs=0")
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
  assert "--init_from" in err or "config.json" in err, err
  assert snapshot(wd) == before and not os.path.exists(new)


def test_eval_of_a_file_says_it_is_a_file(tmp_path, capsys):
  f = tmp_path / "results.json"
  f.write_text("{}")
  assert eval_main(str(f)) == 2
  err = capsys.readouterr().err
  assert "is a file, not a run directory" in err and "does not exist" not in err, err


def test_bad_input_in_a_real_process(done_run, tmp_path):
  """As a user meets it: exit 2, one paragraph, no traceback, files untouched."""
  wd = copy_run(done_run, tmp_path)
  before = snapshot(wd)
  p = run_train(wd, None, "--set", "model_kwargs.hidden=(16,16)")
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
  assert p.stderr.startswith("error: The workdir") and "new --workdir" in p.stderr
  assert snapshot(wd) == before
  # (eval.py in a real process: tests/test_cli.py::test_eval_without_checkpoint.)


def test_a_key_added_since_the_run_resumes_only_at_its_default(tmp_path):
  """A workdir written before a config key existed resumes when the key is at the default that
  keeps the old behaviour, and is refused (naming the key) when it is not."""
  from arsp_jax.configs import base  # noqa: PLC0415
  from arsp_jax.errors import ConfigError  # noqa: PLC0415
  from arsp_jax.train import resume  # noqa: PLC0415

  new = resume.as_json(base.get_config().to_dict())
  old = json.loads(json.dumps(new))
  del old["arsp"]["eval_batch"]  # written before arsp.eval_batch existed
  resume.refuse_other_config(str(tmp_path), old, new, ConfigError)  # default: resumes
  new["arsp"]["eval_batch"] = 256
  with pytest.raises(ConfigError, match=r"arsp\.eval_batch: None -> 256"):
    resume.refuse_other_config(str(tmp_path), old, new, ConfigError)
  new["arsp"]["eval_batch"] = 0
  old["arsp"]["temperature"] = 7.0  # a key both have still differs
  with pytest.raises(ConfigError, match=r"arsp\.temperature"):
    resume.refuse_other_config(str(tmp_path), old, new, ConfigError)


@pytest.mark.slow  # make test-all (make test: under 6 minutes on 2 cores)
def test_grain_pipeline_preempted_and_resumed_in_real_processes(tmp_path):
  """A tensorflow-datasets dataset prepared in a temp dir, trained by train.py through grain
  with a worker process decoding ahead of the step: SIGTERM mid ARSP epoch saves the position
  of the last batch the step consumed (not the prefetched ones). Resumed with grain in the
  training process (input_workers may change on resume, e.g. on another machine), the run ends
  as the uninterrupted one made here: same masks, keep ratios, parameters and accuracy."""
  from tests.util import prepare_tiny_tfds  # noqa: PLC0415

  data_dir = str(tmp_path / "tfds")
  name = prepare_tiny_tfds(data_dir)
  sets = ["dataset_kwargs.image_size=12", "val_size=8", "batch_size=8", "eval_batch_size=8",
          "model_kwargs.hidden=(16,16)", "epochs=1", "arsp.epochs=2", "finetune.epochs=1",
          "arsp.prune_every=2", "arsp.population=2", "arsp.recovery_steps=1",
          "arsp.recovery_batch=4", "arsp.calib_size=8", "arsp.reward_size=8", "log_every=1",
          "lr_schedule=constant", "num_devices=1", "keep_checkpoints=10"]  # fmt: skip
  argv = [f"--dataset={name}", f"--data_dir={data_dir}", "--model=mlp", "--progress=false"]
  argv += [a for kv in sets for a in ("--set", kv)]
  wd, ref_wd = str(tmp_path / "run"), str(tmp_path / "ref")

  def start(*fault):
    cmd = ["-m", "tests.fault_launcher", f"--fault={fault[0]}"] if fault else ["train.py"]
    workers = ["--set", "input_workers=1" if fault else "input_workers=0"]
    return subprocess.Popen(
      [sys.executable, *cmd, f"--workdir={wd}", *argv, *workers], cwd=ROOT, env=subprocess_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

  # 5 steps per epoch; SIGTERM after ARSP epoch 2's step 3 (global step 13): checkpoint 13.
  proc = start("term:arsp:2:3")
  from absl import flags  # noqa: PLC0415

  flags.FLAGS.unparse_flags()
  flags.FLAGS(["train.py", *argv, "--set", "input_workers=0"])
  ref = loop.run(cli.config_from_flags(), ref_wd, progress=False, log=lambda *_: None)
  flags.FLAGS.unparse_flags()
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == cli.EXIT_PREEMPTED, err[-3000:]
  assert "pre-empted" in err and "Traceback" not in err, err[-3000:]
  assert ck_steps(wd) == [5, 10, 13]
  meta = raw_state(wd)[1]
  assert (meta["phase"], meta["phase_epoch"], meta["step_in_epoch"]) == ("arsp", 1, 3)

  proc = start()
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Resuming" in out and "1 epoch(s) and 3 step(s) done" in out, out
  assert "leaked" not in err and "Traceback" not in err, err[-3000:]
  got = results(wd)
  assert got["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1e-6)
  np.testing.assert_allclose(
    got["keep_ratios"]["per_round"], ref["keep_ratios"]["per_round"], atol=1e-6
  )
  assert len(got["history"]["rounds"]) == len(ref["history"]["rounds"]) >= 4
  s1, s2 = raw_state(wd)[0], raw_state(ref_wd)[0]
  for a, b in zip(jax.tree.leaves(s1["masks"]), jax.tree.leaves(s2["masks"]), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"]), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
