"""train.py / eval.py as a user runs them: bad input gives one clear paragraph and exit 2."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests import util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(script, *args, env_extra=None, timeout=240):
  env = util.subprocess_env(**(env_extra or {}))
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, script), *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_user_error(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr
  for n in needles:
    assert n in proc.stderr, (n, proc.stderr[-1500:])


def bad(category, args, *needles):
  return pytest.param(args, needles, id=f"{category}:{' '.join(args)}")


BAD_INPUT = [
  # unknown names
  bad("unknown", ["--dataset=no_such_dataset"], "no_such_dataset"),
  bad("unknown", ["--method=bogus"], "--method", "arsp"),
  bad("unknown", ["--score=bogus"], "--score", "magnitude"),
  bad("unknown", ["--granularity=rows"], "--granularity", "channel"),
  bad("unknown", ["--model=bogus"], "bogus", "mlp"),
  bad("unknown", ["--nan_policy=retry"], "--nan_policy", "skip"),
  bad("unknown", ["--set", "arsp.budget_mode=min"], "arsp.budget_mode", "exact"),
  # unknown keys
  bad("unknown key", ["--set", "arsp.nonsense=1"], "arsp.nonsense"),
  bad("unknown key", ["--config.arsp.dleta=0.1"], "arsp.dleta"),
  bad("unknown key", ["--config.nosuch.key=1"], "nosuch"),
  bad("unknown key", ["--set", "model_kwargs.depth=3"], "model_kwargs.depth", "hidden"),
  bad("unknown key", ["--set", "dataset_kwargs.image_size=32"], "dataset_kwargs.image_size"),
  # non-finite
  bad("non-finite", ["--target_sparsity=nan"], "--target_sparsity", "[0, 1)"),
  bad("non-finite", ["--learning_rate=inf"], "--learning_rate"),
  bad("non-finite", ["--lambda_density=-inf"], "--lambda_density"),
  bad("non-finite", ["--set", "arsp.policy_std=nan"], "arsp.policy_std"),
  bad("non-finite", ["--config.arsp.temperature=inf"], "--temperature"),
  bad("non-finite", ["--set", "hyperscore.gamma=-inf"], "hyperscore.gamma"),
  # out of range
  bad("range", ["--target_sparsity=1.5"], "--target_sparsity", "[0, 1)"),
  bad("range", ["--epochs=-1"], "--epochs", "non-negative"),
  bad("range", ["--set", "arsp.policy_std=-0.1"], "arsp.policy_std", "(0, 1]"),
  bad("range", ["--config.arsp.rho_min=-0.1"], "arsp.rho_min"),
  bad("range", ["--finetune_lr=0"], "--finetune_lr"),
  bad("range", ["--prune_every=0"], "--prune_every", "positive"),
  bad("range", ["--checkpoint_every_steps=-1"], "--checkpoint_every_steps"),
  bad("range", ["--val_size=-1"], "--val_size"),
  bad("range", ["--set", "arsp.grad_ema_decay=1.5"], "arsp.grad_ema_decay"),
  bad("range", ["--set", "model_kwargs.bn_momentum=2"], "model_kwargs.bn_momentum"),
  bad("range", ["--set", "dataset_kwargs.num_classes=1"], "dataset_kwargs.num_classes"),
  bad("range", ["--target_sparsity=0.99", "--config.arsp.rho_min=0.02"], "rho_min"),
  bad("range", ["--batch_size=30"], "30", "8"),  # 8 fake devices in tests
  bad("range", ["--prune_every=100000"], "--prune_every"),
  # wrong type
  bad("type", ["--set", "arsp.policy_std=abc"], "arsp.policy_std", "number"),
  bad("type", ["--set", "epochs=1.5"], "--epochs", "integer"),
  bad("type", ["--set", "epochs=true"], "--epochs", "integer"),
  bad("type", ["--set", "model_kwargs.hidden=abc"], "model_kwargs.hidden", "tuple"),
  bad("type", ["--config.model_kwargs.hidden=abc"], "model_kwargs.hidden"),
  bad("type", ["--set", "dataset_kwargs.image_shape=(28,28)"], "dataset_kwargs.image_shape"),
  bad("type", ["--set", "model_kwargs.scale=1"], "model_kwargs.scale", "true or false"),
  bad("type", ["--config.arsp.policy_std=abc"], "--config.arsp.policy_std", "abc"),
  bad("type", ["--epochs=ten"], "--epochs", "ten"),
  # malformed override
  bad("malformed", ["--set", "noequals"], "key=value"),
  bad("malformed", ["--set", "model_kwargs.hidden=(32,abc)"], "model_kwargs.hidden"),
  bad("malformed", ["--config.arsp={bad"], "--config.arsp"),
  bad(
    "malformed",
    ["--config.arsp.policy_std=0.1", "--config=arsp_jax/configs/synthetic.py"],
    "before",
  ),
  bad("malformed", ["--no_such_flag=1"], "no_such_flag"),
  bad("malformed", ["--coordinator_address=h:1"], "--coordinator_address", "--distributed"),
  bad(
    "malformed",
    ["--distributed", "--coordinator_address=h:1", "--num_processes=2"],
    "--process_id",
  ),
  bad(
    "range",
    ["--distributed", "--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
    "--process_id=2",
  ),
  # explicit paths that cannot be used
  bad("path", ["--init_from=/nonexistent/run"], "--init_from"),
  bad("path", ["--config=/nonexistent/preset.py"], "--config=/nonexistent/preset.py"),
]


@pytest.mark.parametrize("args, needles", BAD_INPUT)
def test_train_bad_input(tmp_path, capsys, train_main, args, needles):
  """Exit status 2, one paragraph starting with ``error:`` that names the problem, no
  traceback, nothing written."""
  wd = tmp_path / "wd"
  code = train_main(f"--workdir={wd}", "--dataset=synthetic", "--progress=false", *args)
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("error: ") and "Traceback" not in err, err
  assert "\n\n" not in err.strip(), err  # one paragraph
  for n in needles:
    assert n in err, (n, err)
  assert not os.path.exists(wd)


def test_train_bad_flag_in_a_real_process(tmp_path):
  proc = run_cli(
    "train.py", f"--workdir={tmp_path / 'wd'}", "--dataset=synthetic", "--method=bogus"
  )
  assert_user_error(proc, "--method", "arsp")


def test_train_missing_and_corrupt_data(tmp_path, capsys, train_main, monkeypatch):
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("ARSP_DATA_DIR", str(empty))
  assert train_main(f"--data_dir={empty}", f"--workdir={tmp_path / 'wd'}", "--dataset=cifar10") == 2
  assert "cifar-10-batches-py" in capsys.readouterr().err
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in util.FMNIST_FILES.values():
    util.write_idx(bad / name, [[1, 2], [3, 4]], magic=1234)
  assert train_main(f"--data_dir={bad}", f"--workdir={tmp_path / 'wd2'}") == 2
  assert "magic" in capsys.readouterr().err


def test_explicit_data_dir_is_used_or_the_run_fails(tmp_path, capsys, train_main, monkeypatch):
  """A --data_dir without the files (an empty folder, a file, a missing folder) stops the run
  with what is missing and how to get it, although $ARSP_DATA_DIR holds the files."""
  good = tmp_path / "good"
  good.mkdir()
  for key, name in util.FMNIST_FILES.items():
    util.write_idx(good / name, np.zeros((64, 28, 28) if "images" in key else 64, np.uint8))
  monkeypatch.setenv("ARSP_DATA_DIR", str(good))
  empty = tmp_path / "empty"
  empty.mkdir()
  a_file = tmp_path / "file"
  a_file.write_text("x")
  for data_dir, needles in [
    (empty, ["--data_dir", str(empty), "missing", "t10k-labels-idx1-ubyte.gz", "apt-get"]),
    (a_file, ["--data_dir", str(a_file), "not a folder"]),
    (tmp_path / "nowhere", ["does not exist", "apt-get"]),
  ]:
    wd = tmp_path / "wd"
    assert train_main(f"--data_dir={data_dir}", f"--workdir={wd}", "--progress=false") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
      assert n in err, (n, err)
    assert not wd.exists()


def test_bad_flags_in_real_processes(tmp_path):
  """app.run parses the flags through cli.parse_flags: a flag error is a user error too."""
  proc = run_cli("train.py", f"--workdir={tmp_path / 'wd'}", "--config.arsp.policy_std=abc")
  assert_user_error(proc, "--config.arsp.policy_std", "abc")
  proc = run_cli("eval.py", f"--workdir={tmp_path}", "--no_such_flag=1")
  assert_user_error(proc, "no_such_flag")
  assert not (tmp_path / "wd").exists()


def test_eval_without_checkpoint(tmp_path):
  proc = run_cli("eval.py", f"--workdir={tmp_path}")
  assert_user_error(proc, "config.json")


@pytest.mark.slow
def test_train_then_eval_cli(tmp_path, train_main, capsys):
  """train.py's main in this process (real processes of it: tests/test_reliability.py), then
  eval.py as a real process on the run it wrote."""
  wd = str(tmp_path / "wd")
  args = ["--dataset=synthetic", f"--workdir={wd}", "--progress=false"] + [
    a for kv in util.TINY_SETS for a in ("--set", kv)
  ]
  assert train_main(*args) == 0
  out = capsys.readouterr().out
  assert "final test accuracy" in out and "HyperScore" in out
  assert os.path.exists(os.path.join(wd, "results.json"))
  proc = run_cli("eval.py", f"--workdir={wd}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "accuracy" in proc.stdout and "compression" in proc.stdout
