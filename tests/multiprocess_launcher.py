"""One process of a multi-process ``train.py`` run on one machine (tests/test_multiprocess.py).

  python -m tests.multiprocess_launcher --distributed --coordinator_address=localhost:PORT \
    --num_processes=2 --process_id=I [--fault=term:arsp:1:3] [--slices_out=FILE] \
    --workdir=... <train.py flags>

It runs ``train.py``'s main, which calls ``jax.distributed.initialize`` with the explicit local
coordinator (README "Multi-host": the same flags a user passes where jax cannot auto-detect
the cluster). ``--fault`` is ``tests/fault_launcher.py``'s; ``--slices_out`` saves, for every training batch
of the first epoch this process loads, a fingerprint of each of its examples (label, image sum),
so the test can check that the process read its own slice of every global batch and nothing
more.
"""

import numpy as np
from absl import flags

import train
from arsp_jax import cli
from arsp_jax import data as data_lib
from tests import fault_launcher

flags.DEFINE_string("slices_out", "", ".npy file for the fingerprints of the epoch-0 batches.")
FLAGS = flags.FLAGS


class RecordSlices:
  """A dataset that records the fingerprints of the epoch-0 training batches it yields."""

  def __init__(self, dataset, path: str):
    self.dataset, self.path, self.seen = dataset, path, []

  def __getattr__(self, name):
    return getattr(self.dataset, name)

  def train_batches(self, epoch, global_batch_size, seed, start_step=0):
    for b in self.dataset.train_batches(epoch, global_batch_size, seed, start_step=start_step):
      if epoch == 0:
        self.seen.append(fingerprints(b))
        np.save(self.path, np.stack(self.seen))
      yield b


def fingerprints(batch: dict) -> np.ndarray:
  """[B, 2] float64: each example's label and the sum of its image."""
  images = np.asarray(batch["image"], np.float64).reshape(len(batch["label"]), -1)
  return np.stack([np.asarray(batch["label"], np.float64), images.sum(1)], 1)


def main(argv):
  if FLAGS.fault:
    fault_launcher.install(FLAGS.fault)
  if FLAGS.slices_out:
    load = data_lib.load_dataset
    data_lib.load_dataset = lambda *a, **kw: RecordSlices(load(*a, **kw), FLAGS.slices_out)
  train.main(argv)


if __name__ == "__main__":
  cli.run(main)
