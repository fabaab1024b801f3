"""Training batches of decoded datasets (tensorflow-datasets, ImageNet included) through grain.

``tfds.data_source`` gives random access to the prepared ArrayRecord files; grain runs the
decoding and augmentation of whole local batches in worker processes, ahead of the training
step, and hands them back in order::

    MapDataset.range(start_step, steps)        # one element per training step of the epoch
      .map(_StepBatch(...))                    # decode + augment this process's slice
      .to_iter_dataset()
      .mp_prefetch(MultiprocessingOptions(num_workers=W, per_worker_buffer_size=B))

Each element is built by the same code as the in-process iterator
(:meth:`arsp_jax.data.dataset.Dataset.step_batch`): the global order comes from
``(seed, epoch)``, the augmentation from ``(seed, epoch, step)``, and each process takes
``[process_index::process_count]`` of every global batch, so the batches do not depend on the
number of workers or of processes. A worker holds a copy of the source (the data source handles
pickle; decoding there runs in one thread). The position the training loop checkpoints is the
step it *consumed*; workers run ahead, and a resumed run starts the pipeline again at that step.

In-memory datasets (Fashion-MNIST, CIFAR-10, synthetic) slice numpy arrays faster than a worker
could pickle them back, and keep the in-process iterator.
"""

from __future__ import annotations

from typing import Iterator

#: Batches each worker keeps ready (grain's ``per_worker_buffer_size``).
DEFAULT_BUFFER = 2
#: grain's ``min_shm_size`` above any batch: every batch is copied through the worker's queue.
NO_SHARED_MEMORY = 1 << 62


class _StepBatch:
  """Picklable: the local batch of one training step (``Dataset.step_batch``)."""

  def __init__(self, dataset, order, global_batch_size: int, seed: int, epoch: int):
    self.dataset, self.order = dataset, order
    self.global_batch_size, self.seed, self.epoch = global_batch_size, seed, epoch

  def __call__(self, step) -> dict:
    return self.dataset.step_batch(
      self.order, int(step), self.global_batch_size, self.seed, self.epoch
    )


def train_batches(
  dataset, order, start_step: int, steps: int, global_batch_size: int, seed: int, epoch: int,
  workers: int, buffer: int = DEFAULT_BUFFER,
) -> Iterator[dict]:  # fmt: skip
  """The epoch's local batches from ``start_step`` on, decoded by ``workers`` processes."""
  import grain  # noqa: PLC0415 (only the decoded datasets need it)
  from absl import flags  # noqa: PLC0415

  if not flags.FLAGS.is_parsed():  # grain reads its absl flags; a library caller has none
    flags.FLAGS.mark_as_parsed()

  ds = grain.MapDataset.range(start_step, steps).map(
    _StepBatch(dataset, order, global_batch_size, seed, epoch)
  )
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer))
  # Batches come back pickled through grain's queues, not in shared memory: its shared-memory
  # segments are released by a background thread and outlive a run that ends right after its
  # last batch (Python's resource tracker then warns of leaked segments at every exit).
  it_ds = grain.experimental.WithOptionsIterDataset(
    it_ds, grain.experimental.DatasetOptions(min_shm_size=NO_SHARED_MEMORY)
  )
  it_ds = it_ds.mp_prefetch(
    grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer)
  )
  it = iter(it_ds)
  try:
    yield from it
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()  # stops the workers now (a stopped or pre-empted epoch too)
