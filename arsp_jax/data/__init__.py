"""Datasets and deterministic, resumable, per-process batch iterators.

Every loader ends in the same :class:`Dataset` object, whose iterators yield
numpy batches::

    {"image": float32 [B, H, W, C] (NHWC, standardised),
     "label": int32 [B]}
    # eval batches also carry
     "weight": float32 [B]  (1.0 for real examples, 0.0 for padding)

Supported datasets (``name`` in :func:`load_dataset`):

``fashion_mnist`` (the default)
    The four standard IDX ``.gz`` files, parsed here with numpy (no
    tensorflow-datasets: Debian's copies differ from upstream by a few header
    bytes, which breaks tfds' checksums). Looked up in ``data_dir`` when one is
    given (and only there), else in ``$ARSP_DATA_DIR``, then
    ``/usr/share/datasets/fashion-mnist`` (installed by
    ``apt-get install dataset-fashion-mnist``).
``cifar10``
    The canonical ``cifar-10-batches-py`` pickles under ``data_dir`` (or, when
    none is given, ``$ARSP_DATA_DIR``); training batches get random-crop (zero padding 4) and
    horizontal-flip augmentation. If no pickles are found but ``data_dir``
    holds a tensorflow-datasets ``cifar10`` copy, that copy is used instead.
``synthetic``
    Procedurally generated, class-structured images; always available.
any other tensorflow-datasets builder name (e.g. ``imagenet2012``)
    Read with random access through ``tfds.data_source`` from a copy already
    prepared (ArrayRecord format) in ``data_dir``. Works without TensorFlow.
    Nothing is ever downloaded.

Modules: ``dataset.py`` (the Dataset, its iterators and sources), ``local.py``
(Fashion-MNIST, CIFAR-10), ``synthetic.py``, ``tfds.py``. Determinism and
multi-process slicing: see ``dataset.py``.
"""

from __future__ import annotations

import os

import numpy as np

from arsp_jax import names
from arsp_jax import registry as registry_lib
from arsp_jax.data.dataset import (
  ArraySource,
  Dataset,
  Source,
  check_batch_size,
  crop_flip,
  reject_options,
)
from arsp_jax.data.local import (
  CIFAR10_FILES,
  CIFAR10_FOLDER,
  CIFAR10_URL,
  DATA_DIR_ENV,
  FASHION_MNIST_FILES,
  SYSTEM_FASHION_MNIST_DIR,
  load_cifar10,
  load_fashion_mnist,
)
from arsp_jax.data.synthetic import SYNTHETIC_OPTIONS, make_synthetic
from arsp_jax.data.tfds import (
  DATASETS,
  IMAGENET_MEAN,
  IMAGENET_STD,
  TFDS_OPTIONS,
  load_tfds,
  random_resized_crop_box,
)
from arsp_jax.errors import DataError
from arsp_jax.registry import Registry

__all__ = [
  "CIFAR10_FILES",
  "CIFAR10_FOLDER",
  "CIFAR10_URL",
  "DATASETS",
  "DATA_DIR_ENV",
  "FASHION_MNIST_FILES",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "LOCAL_DATASETS",
  "SYNTHETIC_OPTIONS",
  "SYSTEM_FASHION_MNIST_DIR",
  "TFDS_OPTIONS",
  "ArraySource",
  "DataError",
  "Dataset",
  "Source",
  "check_batch_size",
  "crop_flip",
  "dataset_options",
  "load_dataset",
  "random_resized_crop_box",
]


def _fashion_mnist(data_dir, kwargs, val_size, seed):
  reject_options("fashion_mnist", kwargs, ())
  return load_fashion_mnist(data_dir)


def _cifar10(data_dir, kwargs, val_size, seed):
  return load_cifar10(data_dir, kwargs)


def _synthetic(data_dir, kwargs, val_size, seed):
  reject_options("synthetic", kwargs, SYNTHETIC_OPTIONS)
  return make_synthetic(
    image_shape=tuple(kwargs.get("image_shape", (28, 28, 1))),
    num_classes=int(kwargs.get("num_classes", 10)),
    # the validation split is generated in addition to num_train
    num_train=int(kwargs.get("num_train", 6000)) + val_size,
    num_test=int(kwargs.get("num_test", 1000)),
    seed=seed,
  )


#: The datasets this package reads itself, each a loader ``(data_dir, options, val_size, seed)
#: -> source``; any other name is a tensorflow-datasets name.
LOADERS: Registry = registry_lib.of(
  "dataset", {"fashion_mnist": _fashion_mnist, "cifar10": _cifar10, "synthetic": _synthetic}
)
LOCAL_DATASETS = LOADERS.names()


def dataset_options(name: str) -> tuple[str, ...]:
  """The options (``load_dataset`` keyword arguments) dataset ``name`` takes."""
  key = names.canonical(name)
  return {"fashion_mnist": (), "synthetic": SYNTHETIC_OPTIONS}.get(key, TFDS_OPTIONS)


def load_dataset(
  name: str,
  data_dir: str | None = None,
  *,
  val_size: int = 5000,
  seed: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  input_workers: int = 0,
  **kwargs,
) -> Dataset:
  """Loads dataset ``name`` and carves a validation split out of its training split.

  Args:
    name: one of :data:`DATASETS` or any tensorflow-datasets builder name.
    data_dir: where to look for the files (see the module docstring).
    val_size: number of training examples held out as the "val" split
      (deterministic from ``seed``); 0 for none. For ``synthetic`` the
      validation examples are generated in addition to ``num_train``.
    seed: dataset seed (validation carve-out, synthetic data, nothing else).
    process_index, process_count: this process's slice of every global batch.
    input_workers: for the datasets that decode examples (tensorflow-datasets), the grain
      worker processes that decode and augment training batches ahead of the step
      (:mod:`arsp_jax.data.grain_loader`); 0 runs grain's pipeline in this process.
    **kwargs: dataset options (``None`` values are ignored):
      synthetic: ``image_shape=(28, 28, 1)``, ``num_classes=10``,
        ``num_train=6000``, ``num_test=1000``.
      tfds datasets: ``image_size`` (default: the native size for fixed-size
        square images, else 224), ``test_split`` (default "test", or
        "validation" for ImageNet / when there is no "test"),
        ``image_key="image"``, ``label_key="label"``, ``num_workers``
        (decoding threads).
      cifar10 read from a tfds copy accepts the tfds options too.

  Raises:
    DataError: with instructions, for any missing / corrupt data or bad option.
  """
  if not isinstance(val_size, (int, np.integer)) or val_size < 0:
    raise DataError(f"--val_size must be a non-negative integer, got {val_size!r}.")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(
      f"process_index={process_index} / process_count={process_count} is invalid: need "
      "process_count >= 1 and 0 <= process_index < process_count."
    )
  if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DataError(
      f"--data_dir={data_dir} is a file, not a folder. Pass the folder that holds the "
      f"{name} files (or leave --data_dir out to use the default locations)."
    )
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  key = names.canonical(name)
  loader = LOADERS.get(key, None)
  source = loader(data_dir, kwargs, val_size, seed) if loader else load_tfds(key, data_dir, kwargs)
  return Dataset.from_source(
    key,
    source,
    val_size=val_size,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    input_workers=input_workers,
  )
