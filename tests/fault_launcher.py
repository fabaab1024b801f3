"""Fault injection for the crash tests: ``train.py`` in a real process that dies at a chosen point.

  python -m tests.fault_launcher --fault=kill:arsp:1:6 --workdir=... <train.py flags>

``--fault``:
  kill:<phase>:<epoch>:<step>  SIGKILL this process after that step (epoch of the phase and step
                               of the epoch, 1-based), before any checkpoint of it is written;
  term:<phase>:<epoch>:<step>  send this process SIGTERM there (pre-emption);
  kill-save:<n>                SIGKILL during this process's n-th checkpoint save, after orbax
                               wrote the items to its temporary directory, before it commits.

The first two are a hook given to ``loop.run(hooks=...)`` (it runs before the checkpointing
hook); ``kill-save`` patches orbax. In-process, ``nan_images_at`` makes one training batch NaN.
Production code has no switch for any of this.
"""

import functools
import os
import signal

import numpy as np
from absl import app, flags

import train
from arsp_jax import cli
from arsp_jax import data as data_lib
from arsp_jax.train import checkpoint as ckpt_lib
from arsp_jax.train import hooks, loop

flags.DEFINE_string("fault", "", "kill|term:<phase>:<epoch>:<step> or kill-save:<n>.")


class SignalAt(hooks.Hook):
  """Sends ``sig`` to this process after step ``step`` of epoch ``epoch`` of ``phase``."""

  def __init__(self, sig: int, phase: str, epoch: int, step: int):
    self.sig, self.where = sig, (phase, epoch, step)

  def after_steps(self, run, window):
    phase, epoch, step = self.where
    if (run.phase, run.epoch + 1) == (phase, epoch) and run.step - window.k < step <= run.step:
      os.kill(os.getpid(), self.sig)


def kill_during_save(n: int) -> None:
  """SIGKILL this process inside its ``n``-th ``Checkpointer.save``, when orbax finalises the
  first item (so nothing of that checkpoint is committed)."""
  from orbax.checkpoint._src.path import atomicity

  save, count = ckpt_lib.Checkpointer.save, [0]

  async def die(tmp_path):
    os.kill(os.getpid(), signal.SIGKILL)

  def counting_save(self, *args, **kwargs):
    count[0] += 1
    if count[0] == n:
      atomicity.AtomicRenameTemporaryPath.finalize = die
    return save(self, *args, **kwargs)

  ckpt_lib.Checkpointer.save = counting_save


def install(fault: str) -> None:
  kind, *where = fault.split(":")
  if kind == "kill-save" and len(where) == 1:
    kill_during_save(int(where[0]))
  elif kind in ("kill", "term") and len(where) == 3:
    sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
    hook = SignalAt(sig, where[0], int(where[1]), int(where[2]))
    loop.run = functools.partial(loop.run, hooks=[hook])  # train.main calls loop.run
  else:
    raise app.UsageError(f"unknown --fault={fault!r}")


class NaNImagesAt:
  """A dataset whose training batch ``step`` (1-based) of epoch ``epoch`` (0-based, over all
  phases) has NaN images; everything else is the wrapped dataset's."""

  def __init__(self, dataset, epoch: int, step: int):
    self.dataset, self.where = dataset, (epoch, step)

  def __getattr__(self, name):
    return getattr(self.dataset, name)

  def train_batches(self, epoch, global_batch_size, seed, start_step=0):
    batches = self.dataset.train_batches(epoch, global_batch_size, seed, start_step=start_step)
    for i, b in enumerate(batches, start=start_step + 1):
      if (epoch, i) == self.where:
        b = dict(b, image=np.full_like(b["image"], np.nan))
      yield b


def nan_images_at(monkeypatch, epoch: int, step: int) -> None:
  """Runs built in this process (pytest's ``monkeypatch``) see NaN images at that step."""
  load = data_lib.load_dataset
  monkeypatch.setattr(
    data_lib, "load_dataset", lambda *a, **kw: NaNImagesAt(load(*a, **kw), epoch, step)
  )


def main(argv):
  install(flags.FLAGS.fault)
  train.main(argv)


if __name__ == "__main__":
  cli.run(main)  # train.py's own error boundary (pre-emption: exit 143)
