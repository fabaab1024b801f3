"""train.py / eval.py as a user runs them: bad input gives one clear paragraph and exit 2."""

import os
import subprocess
import sys

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


@pytest.mark.parametrize(
  "args, needles",
  [
    (["--dataset=no_such_dataset"], ["no_such_dataset"]),
    (["--method=bogus"], ["--method", "arsp"]),
    (["--score=bogus"], ["--score", "magnitude"]),
    (["--granularity=rows"], ["--granularity", "channel"]),
    (["--target_sparsity=1.5"], ["--target_sparsity", "[0, 1)"]),
    (["--epochs=-1"], ["--epochs", "non-negative"]),
    (["--model=bogus"], ["bogus", "mlp"]),
    (["--set", "arsp.nonsense=1"], ["arsp.nonsense"]),
    (["--set", "noequals"], ["key=value"]),
    (["--batch_size=30"], ["30", "8"]),  # 8 fake devices in tests
    (["--prune_every=100000"], ["--prune_every"]),
    (["--init_from=/nonexistent/run"], ["--init_from"]),
  ],
)
def test_train_bad_input(tmp_path, capsys, train_main, args, needles):
  wd = tmp_path / "wd"
  code = train_main(f"--workdir={wd}", "--dataset=synthetic", "--progress=false", *args)
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("error: ") and "Traceback" not in err
  for n in needles:
    assert n in err, (n, err)
  assert not os.path.exists(wd / "results.json")


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


def test_eval_without_checkpoint(tmp_path):
  proc = run_cli("eval.py", f"--workdir={tmp_path}")
  assert_user_error(proc, "config.json")


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
