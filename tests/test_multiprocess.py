"""A real 2-process run on one machine: 2 processes x 4 fake CPU devices (jax.distributed with a
local coordinator, gloo CPU collectives) against 1 process x 8 devices.

Each process is ``tests/multiprocess_launcher.py`` (``train.py``'s main after
``jax.distributed.initialize``). The run is pre-empted first: SIGTERM to process 1 only, mid ARSP
epoch; both processes must stop at the same step with one checkpoint. Rerun, it resumes and must
end with the masks, keep ratios, agent and parameters of the 1-process run (float tolerance), each
process having read only its own slice of every global batch.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from arsp_jax import data as data_lib
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import loop
from tests import util
from tests.multiprocess_launcher import fingerprints
from tests.test_reliability import ck_steps, raw_state, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NPROC = 2

pytestmark = [
  pytest.mark.skipif(
    jax.config.values.get("jax_cpu_collectives_implementation") != "gloo",
    reason="this jax has no gloo CPU collectives, so CPU processes cannot run collectives together",
  ),
  # make test-all: 4 processes and an 8-device reference (~80 s of CPU, a quarter of `make
  # test`'s budget); `make test` checks 1 against 8 devices in one process
  # (tests/test_step.py::test_arsp_step_same_on_1_and_8_devices).
  pytest.mark.slow,
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(wd, tmp, fault_on=None, fault=""):
  """Starts the NPROC processes of one run; returns them (stdout+stderr to files in tmp)."""
  port, procs = free_port(), []
  for i in range(NPROC):
    argv = [
      sys.executable,
      "-m",
      "tests.multiprocess_launcher",
      "--distributed",
      f"--coordinator_address=localhost:{port}",
      f"--num_processes={NPROC}",
      f"--process_id={i}",
      f"--slices_out={tmp}/slices{i}.npy",
      f"--workdir={wd}",
      "--dataset=synthetic",
      "--noprogress",
      *[f"--set={s}" for s in util.TINY_SETS],
      "--set=num_devices=0",
      *([f"--fault={fault}"] if i == fault_on else []),
    ]
    env = util.subprocess_env(
      XLA_FLAGS="--xla_force_host_platform_device_count=4 "
      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    log = open(os.path.join(tmp, f"log{i}.txt"), "w")
    procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def finish(procs, tmp, timeout=240):
  """Exit codes and output of the processes (all killed if one hangs)."""
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outs = []
  for i in range(NPROC):
    with open(os.path.join(tmp, f"log{i}.txt")) as f:
      outs.append(f.read())
  return codes, outs


def restore_like(wd, step, like):
  """The state of checkpoint ``step`` of a multi-process run, restored in this process onto one
  device with the structure of ``like`` (orbax refuses to guess across topologies)."""
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), like)
  ck = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints"))
  out = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  ck.close()
  return jax.device_get(out["state"])


def test_two_processes_match_one_and_stop_together(tmp_path):
  wd, ref_wd = str(tmp_path / "run"), str(tmp_path / "ref")
  # Pre-emption: SIGTERM reaches process 1 only, after ARSP step 3 (global step 11). The
  # processes agree at the next log point (ARSP step 4) and both save checkpoint 12.
  procs = launch(wd, tmp_path, fault_on=1, fault="term:arsp:1:3")
  # The reference, 1 process x 8 devices, runs here meanwhile.
  cfg = util.tiny_config(num_devices=0)
  ref = loop.run(cfg, ref_wd, progress=False, log=lambda *_: None)
  assert ref["devices"] == 8 and ref["processes"] == 1
  codes, outs = finish(procs, tmp_path)
  assert codes == [143, 143], outs
  for out in outs:
    assert "pre-empted (SIGTERM): saved checkpoint 12 at arsp epoch 1 step 4/8" in out, out
  assert ck_steps(wd) == [8, 12]
  meta = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints")).restore_meta()
  assert (meta["phase"], meta["phase_epoch"], meta["step_in_epoch"]) == ("arsp", 0, 4)

  # Each process read its own half of every global batch of the first epoch, nothing else.
  ds = data_lib.load_dataset(
    cfg.dataset, None, val_size=cfg.val_size, seed=cfg.seed, **dict(cfg.dataset_kwargs)
  )
  full = [fingerprints(b) for b in ds.train_batches(0, cfg.batch_size, cfg.seed)]
  got = [np.load(tmp_path / f"slices{i}.npy") for i in range(NPROC)]
  assert [g.shape for g in got] == [(len(full), cfg.batch_size // NPROC, 2)] * NPROC
  for i in range(NPROC):
    np.testing.assert_array_equal(got[i], np.stack([b[i::NPROC] for b in full]))

  # Rerun: resumes from checkpoint 12 on both processes and finishes.
  codes, outs = finish(launch(wd, tmp_path), tmp_path)
  assert codes == [0, 0], outs
  assert "Resuming" in outs[0], outs[0]  # process 0 logs
  # ...and only process 0 prints the results (every process holds the same ones).
  assert "results: " in outs[0] and "results: " not in outs[1], outs
  res = results(wd)
  assert res["devices"] == 8 and res["processes"] == NPROC
  np.testing.assert_allclose(
    res["keep_ratios"]["per_round"], ref["keep_ratios"]["per_round"], atol=1e-5
  )
  assert res["layer_sparsity"] == pytest.approx(ref["layer_sparsity"], abs=1e-9)
  assert res["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1.5 / 128)
  assert ck_steps(wd) == [8, 12, 16, 24, 32] and ck_steps(ref_wd) == [8, 16, 24, 32]
  # The agent at the end of the ARSP phase (checkpoint 24); masks and weights at the end.
  for step, keys in ((24, ("agent", "keep_ratios")), (32, ("masks", "params"))):
    want_state = raw_state(ref_wd, step)[0]
    got_state = restore_like(wd, step, want_state)
    for key in keys:
      leaves = jax.tree.leaves(want_state[key])
      assert leaves, key
      for a, b in zip(jax.tree.leaves(got_state[key]), leaves, strict=True):
        if key == "masks":
          np.testing.assert_array_equal(a, b)
        else:
          np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"{key} at step {step}")
