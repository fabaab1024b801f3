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
    bytes, which breaks tfds' checksums). Looked up in ``data_dir``, then
    ``$ARSP_DATA_DIR``, then ``/usr/share/datasets/fashion-mnist`` (installed
    by ``apt-get install dataset-fashion-mnist``).
``cifar10``
    The canonical ``cifar-10-batches-py`` pickles under ``data_dir`` (or
    ``$ARSP_DATA_DIR``); training batches get random-crop (zero padding 4) and
    horizontal-flip augmentation. If no pickles are found but ``data_dir``
    holds a tensorflow-datasets ``cifar10`` copy, that copy is used instead.
``synthetic``
    Procedurally generated, class-structured images; always available.
any other tensorflow-datasets builder name (e.g. ``imagenet2012``)
    Read with random access through ``tfds.data_source`` from a copy already
    prepared (ArrayRecord format) in ``data_dir``. Works without TensorFlow.
    Nothing is ever downloaded.

Determinism. The validation split is carved out of the training split from the
dataset ``seed``. The training order of an epoch depends only on
``(seed, epoch)`` and the augmentation of a step only on
``(seed, epoch, step)``; both are drawn for the *global* batch before it is
sliced per process, so results do not depend on the number of processes and
``start_step`` resumes exactly where an interrupted epoch stopped.

Multi-process. Each process receives examples
``[process_index::process_count]`` of every global batch (so every local batch
has ``global_batch_size // process_count`` examples); the global batch can be
assembled with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import logging
import math
import os
import pickle
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from arsp_jax.errors import DataError

logger = logging.getLogger(__name__)

#: Datasets handled by this module itself. Any tensorflow-datasets builder name
#: (e.g. ``"imagenet2012"``) is accepted as well, read from a prepared
#: ``data_dir`` through ``tfds.data_source``.
DATASETS = ("fashion_mnist", "cifar10", "synthetic")

#: Environment variable consulted after ``data_dir`` when looking for files.
DATA_DIR_ENV = "ARSP_DATA_DIR"
#: Where ``apt-get install dataset-fashion-mnist`` puts the IDX files.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_FILES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

#: ImageNet per-channel mean / std in uint8 pixel units (used for tfds datasets).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# Stream tags keep the random streams derived from one seed independent.
_TAG_VAL_SPLIT = 1
_TAG_SHUFFLE = 2
_TAG_AUGMENT = 3
_TAG_FIXED = 4
_TAG_SYNTHETIC = 5
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

_TFDS_OPTIONS = ("image_size", "test_split", "image_key", "label_key", "num_workers")
_RRC_TRIES = 10  # random-resized-crop attempts before the centre-crop fallback
_SYNTHETIC_MAX_BYTES = 4 << 30


def check_batch_size(global_batch_size: int, num_devices: int) -> None:
  """Raises :class:`DataError` unless ``global_batch_size`` is a positive multiple of
  ``num_devices``."""
  if num_devices <= 0:
    raise DataError(f"num_devices must be positive, got {num_devices}.")
  if global_batch_size <= 0 or global_batch_size % num_devices:
    suggestion = max(num_devices, (max(global_batch_size, 0) // num_devices) * num_devices)
    raise DataError(
      f"--batch_size={global_batch_size} must be a positive multiple of the number of "
      f"devices ({num_devices}), because every device gets an equal share of each batch. "
      f"Use e.g. --batch_size={suggestion}."
    )


def _rng(*keys: int) -> np.random.Generator:
  """A numpy Generator seeded by a tuple of integers (any sign)."""
  return np.random.default_rng([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys])


# ----------------------------------------------------------------------------
# Sources: map (split, indices) to standardised examples.
# ----------------------------------------------------------------------------


class _Source:
  """Backend of a :class:`Dataset`: random access to the raw splits.

  ``sizes`` maps the raw split names ``"train"`` and ``"test"`` to their
  number of examples (the validation split is a subset of raw ``"train"``).
  """

  image_shape: tuple
  num_classes: int
  sizes: dict
  mean: np.ndarray  # float32 [C]
  std: np.ndarray  # float32 [C]

  #: Number of uniform random numbers one example's augmentation consumes (0: none).
  aug_dim: int = 0

  def fit_standardisation(self, train_indices: np.ndarray) -> None:
    """Computes mean/std from the given raw-train examples (no-op for fixed constants)."""

  def load(
    self, split: str, indices: np.ndarray, aug: np.ndarray | None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float32 [B,H,W,C] standardised images, int32 [B] labels).

    ``aug`` is None (evaluation preprocessing) or float64 [B, aug_dim] of
    uniforms in [0, 1) that fully determine each example's augmentation.
    """
    raise NotImplementedError


class _ArraySource(_Source):
  """In-memory splits: images [N,H,W,C] (uint8 or float32), labels int32 [N].

  Args:
    images / labels: dicts keyed by "train" and "test".
    num_classes: number of classes.
    crop_pad: if > 0, training augmentation is a random crop of the
      zero-padded (after standardisation) image plus a random horizontal flip.
  """

  def __init__(
    self,
    images: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    num_classes: int,
    crop_pad: int = 0,
  ):
    self.images = dict(images)
    self.labels = {k: np.asarray(v, np.int32) for k, v in labels.items()}
    self.image_shape = tuple(int(d) for d in self.images["train"].shape[1:])
    self.num_classes = int(num_classes)
    self.sizes = {k: int(v.shape[0]) for k, v in self.images.items()}
    self.crop_pad = int(crop_pad)
    self.aug_dim = 3 if crop_pad > 0 else 0
    channels = self.image_shape[-1]
    self.mean = np.zeros(channels, np.float32)
    self.std = np.ones(channels, np.float32)

  def fit_standardisation(self, train_indices: np.ndarray) -> None:
    self.mean, self.std = _channel_stats(self.images["train"], train_indices)

  def load(self, split, indices, aug):
    images = self.images[split][indices].astype(np.float32)
    images -= self.mean
    images /= self.std
    if aug is not None and self.crop_pad > 0:
      images = _crop_flip(images, aug, self.crop_pad)
    return images, self.labels[split][indices]


def _channel_stats(
  images: np.ndarray, indices: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (float32 [C]) of ``images[indices]`` ([N,H,W,C]), chunked."""
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  count = 0
  for start in range(0, len(indices), chunk):
    x = images[indices[start : start + chunk]].reshape(-1, channels).astype(np.float64)
    total += x.sum(0)
    total_sq += np.square(x).sum(0)
    count += x.shape[0]
  if count == 0:
    return np.zeros(channels, np.float32), np.ones(channels, np.float32)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _crop_flip(images: np.ndarray, aug: np.ndarray, pad: int) -> np.ndarray:
  """Vectorised random crop (zero padding ``pad``) + random horizontal flip.

  Args:
    images: float32 [B,H,W,C].
    aug: [B, >=3] uniforms in [0,1): vertical offset, horizontal offset, flip.
  Returns:
    float32 [B,H,W,C].
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy = np.minimum((aug[:, 0] * (2 * pad + 1)).astype(np.int64), 2 * pad)
  dx = np.minimum((aug[:, 1] * (2 * pad + 1)).astype(np.int64), 2 * pad)
  flip = aug[:, 2] < 0.5
  rows = dy[:, None] + np.arange(h)  # [B,H]
  cols = dx[:, None] + np.arange(w)  # [B,W]
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ----------------------------------------------------------------------------
# The Dataset.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
  """A dataset split into train / val / test with deterministic batch iterators.

  Attributes:
    name: dataset name.
    image_shape: (H, W, C) of the images after preprocessing.
    num_classes: number of classes; labels are in [0, num_classes).
    num_train, num_val, num_test: split sizes (val is carved out of train).
    process_index, process_count: which slice of each global batch this
      process receives.
  """

  name: str
  image_shape: tuple
  num_classes: int
  num_train: int
  num_val: int
  num_test: int
  process_index: int = 0
  process_count: int = 1
  _source: _Source | None = dataclasses.field(default=None, repr=False, compare=False)
  _indices: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  # -- helpers ---------------------------------------------------------------

  @property
  def mean(self) -> np.ndarray:
    """float32 [C]: per-channel mean subtracted from raw pixel values."""
    return self._source.mean

  @property
  def std(self) -> np.ndarray:
    """float32 [C]: per-channel std dividing the centred pixel values."""
    return self._source.std

  def _split(self, split: str) -> tuple[str, np.ndarray]:
    """(raw split name, int64 indices into it) of ``split`` in {"train","val","test"}."""
    if split not in self._indices:
      raise DataError(
        f"Unknown split {split!r} for dataset {self.name!r}; use one of {sorted(self._indices)}."
      )
    raw, indices = self._indices[split]
    if len(indices) == 0:
      if split == "val":
        raise DataError(
          f"Dataset {self.name!r} has no validation split because it was loaded with "
          "val_size=0. Pass e.g. --val_size=5000 to carve a validation split out of "
          "the training data, or evaluate on 'test'."
        )
      raise DataError(f"Split {split!r} of dataset {self.name!r} is empty.")
    return raw, indices

  def _local_batch_size(self, global_batch_size: int) -> int:
    if global_batch_size <= 0 or global_batch_size % self.process_count:
      raise DataError(
        f"--batch_size={global_batch_size} must be a positive multiple of the number of "
        f"processes ({self.process_count}), because every process loads an equal share "
        "of each global batch. Use a multiple of the total device count."
      )
    return global_batch_size // self.process_count

  def _slice(self, batch: np.ndarray) -> np.ndarray:
    return batch[self.process_index :: self.process_count]

  # -- public API ------------------------------------------------------------

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Number of full global batches in the training split (remainder dropped)."""
    self._local_batch_size(global_batch_size)
    if global_batch_size > self.num_train:
      raise DataError(
        f"--batch_size={global_batch_size} is larger than the training split of "
        f"{self.name!r} ({self.num_train} examples): not one full batch per epoch. "
        f"Use --batch_size<={self.num_train} or a smaller --val_size."
      )
    return self.num_train // global_batch_size

  def train_batches(
    self, epoch: int, global_batch_size: int, seed: int, start_step: int = 0
  ) -> Iterator[dict]:
    """Shuffled, augmented training batches of one epoch, for this process.

    The order depends only on (seed, epoch), the augmentation only on
    (seed, epoch, step): iterating from ``start_step`` yields exactly the
    batches a full iteration yields from that step on, without loading the
    skipped ones.

    Yields:
      {"image": float32 [b,H,W,C], "label": int32 [b]} with
      b = global_batch_size // process_count, for steps
      start_step .. steps_per_epoch - 1.
    """
    self._local_batch_size(global_batch_size)
    steps = self.steps_per_epoch(global_batch_size)
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    raw, indices = self._split("train")
    order = indices[_rng(seed, _TAG_SHUFFLE, epoch).permutation(len(indices))]
    source = self._source

    def generate():
      for step in range(start_step, steps):
        batch = order[step * global_batch_size : (step + 1) * global_batch_size]
        aug = None
        if source.aug_dim:
          aug = _rng(seed, _TAG_AUGMENT, epoch, step).random((global_batch_size, source.aug_dim))
          aug = self._slice(aug)
        images, labels = source.load(raw, self._slice(batch), aug)
        yield {"image": images, "label": labels}

    return generate()

  def eval_batches(self, split: str, global_batch_size: int) -> Iterator[dict]:
    """All examples of ``split`` ("val", "test", or "train") in order, no augmentation.

    The last batch is padded to the full size (with copies of the split's
    first example) so shapes stay static; padding has weight 0.

    Yields:
      {"image": float32 [b,H,W,C], "label": int32 [b], "weight": float32 [b]},
      b = global_batch_size // process_count; ceil(n / global_batch_size) batches.
    """
    self._local_batch_size(global_batch_size)
    raw, indices = self._split(split)
    source = self._source

    def generate():
      for start in range(0, len(indices), global_batch_size):
        batch = indices[start : start + global_batch_size]
        weight = np.ones(global_batch_size, np.float32)
        if len(batch) < global_batch_size:
          weight[len(batch) :] = 0.0
          batch = np.concatenate(
            [batch, np.full(global_batch_size - len(batch), indices[0], batch.dtype)]
          )
        images, labels = source.load(raw, self._slice(batch), None)
        yield {"image": images, "label": labels, "weight": self._slice(weight)}

    return generate()

  def fixed_batch(self, split: str, size: int, seed: int) -> dict:
    """A fixed random subset of ``split`` ("train", "val", "test"), eval preprocessing.

    Used for batchnorm recalibration and reward evaluation. It is the full
    batch (identical on every process, not sliced). If ``size`` exceeds the
    split, every example appears and some appear twice.

    Returns:
      {"image": float32 [size,H,W,C], "label": int32 [size]}.
    """
    if size <= 0:
      raise DataError(f"fixed_batch size must be positive, got {size}.")
    raw, indices = self._split(split)
    rng = _rng(seed, _TAG_FIXED, _SPLIT_IDS[split])
    reps = -(-size // len(indices))
    chosen = np.concatenate([rng.permutation(indices) for _ in range(reps)])[:size]
    images, labels = self._source.load(raw, chosen, None)
    return {"image": images, "label": labels}


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------


def load_dataset(
  name: str,
  data_dir: str | None = None,
  *,
  val_size: int = 5000,
  seed: int = 0,
  process_index: int = 0,
  process_count: int = 1,
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
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  key = name.strip().lower().replace("-", "_")

  if key == "fashion_mnist":
    _reject_options(key, kwargs, ())
    source = _load_fashion_mnist(data_dir)
    num_train_raw = source.sizes["train"]
  elif key == "cifar10":
    source = _load_cifar10(data_dir, kwargs)
    num_train_raw = source.sizes["train"]
  elif key == "synthetic":
    _reject_options(key, kwargs, ("image_shape", "num_classes", "num_train", "num_test"))
    num_train_raw = int(kwargs.get("num_train", 6000)) + val_size
    source = _make_synthetic(
      image_shape=tuple(kwargs.get("image_shape", (28, 28, 1))),
      num_classes=int(kwargs.get("num_classes", 10)),
      num_train=num_train_raw,
      num_test=int(kwargs.get("num_test", 1000)),
      seed=seed,
    )
  else:
    source = _load_tfds(name.strip(), data_dir, kwargs)
    key = name.strip()
    num_train_raw = source.sizes["train"]

  if val_size >= num_train_raw:
    raise DataError(
      f"--val_size={val_size} is too large: the training split of {key!r} has only "
      f"{num_train_raw} examples and the validation split is carved out of it. Use "
      f"--val_size={min(5000, num_train_raw // 10)} (or 0 for no validation split)."
    )
  perm = _rng(seed, _TAG_VAL_SPLIT).permutation(num_train_raw)
  val_idx = np.sort(perm[:val_size])
  train_idx = np.sort(perm[val_size:])
  source.fit_standardisation(train_idx)
  return Dataset(
    name=key,
    image_shape=tuple(int(d) for d in source.image_shape),
    num_classes=int(source.num_classes),
    num_train=len(train_idx),
    num_val=len(val_idx),
    num_test=int(source.sizes["test"]),
    process_index=int(process_index),
    process_count=int(process_count),
    _source=source,
    _indices={
      "train": ("train", train_idx),
      "val": ("train", val_idx),
      "test": ("test", np.arange(source.sizes["test"])),
    },
  )


def _reject_options(name: str, kwargs: Mapping[str, Any], allowed: Sequence[str]) -> None:
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise DataError(
      f"Dataset {name!r} does not take the option(s) {unknown}; it accepts "
      f"{sorted(allowed) or 'none'}. Remove them from the command line / config."
    )


def _env_data_dir() -> str | None:
  return os.environ.get(DATA_DIR_ENV) or None


# ----------------------------------------------------------------------------
# Fashion-MNIST (IDX files).
# ----------------------------------------------------------------------------


def _load_fashion_mnist(data_dir: str | None) -> _ArraySource:
  """Finds the four IDX files and returns an in-memory source (decoded once per process)."""
  directory = _find_fashion_mnist_dir(data_dir)
  paths = [os.path.join(directory, f) for f in FASHION_MNIST_FILES.values()]
  signature = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
  arrays = _read_fashion_mnist(signature)
  logger.info("fashion_mnist: read from %s", directory)
  return _ArraySource(
    images={"train": arrays[0], "test": arrays[2]},
    labels={"train": arrays[1], "test": arrays[3]},
    num_classes=10,
  )


def _find_fashion_mnist_dir(data_dir: str | None) -> str:
  """First of data_dir, $ARSP_DATA_DIR, the system folder holding all four files."""
  candidates = []
  for base in (data_dir, _env_data_dir()):
    if base:
      candidates += [base, os.path.join(base, "fashion-mnist"), os.path.join(base, "fashion_mnist")]
  candidates.append(SYSTEM_FASHION_MNIST_DIR)
  report = []
  for directory in candidates:
    if not os.path.isdir(directory):
      if directory in (data_dir, _env_data_dir(), SYSTEM_FASHION_MNIST_DIR):
        report.append(f"{directory}: directory does not exist")
      continue
    missing = [
      f for f in FASHION_MNIST_FILES.values() if not os.path.isfile(os.path.join(directory, f))
    ]
    if not missing:
      if report and data_dir:
        logger.warning(
          "fashion_mnist: not found in --data_dir=%s (%s); using %s",
          data_dir,
          "; ".join(report),
          directory,
        )
      return directory
    report.append(f"{directory}: missing {', '.join(missing)}")
  raise DataError(
    "Fashion-MNIST files not found. Searched " + "; ".join(report) + ". Fix: run "
    "`apt-get install dataset-fashion-mnist` (installs them into "
    f"{SYSTEM_FASHION_MNIST_DIR}), or put the four files "
    f"({', '.join(FASHION_MNIST_FILES.values())}) in a folder and pass --data_dir=FOLDER "
    f"or set {DATA_DIR_ENV}=FOLDER."
  )


@functools.lru_cache(maxsize=2)
def _read_fashion_mnist(signature: tuple) -> tuple[np.ndarray, ...]:
  """Decodes (train images, train labels, test images, test labels); cached by file stat."""
  (tri, _, _), (trl, _, _), (tei, _, _), (tel, _, _) = signature
  arrays = []
  for images_path, labels_path in ((tri, trl), (tei, tel)):
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
      raise DataError(
        f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
        f"{labels.shape[0]} labels: the files are from different sets or corrupt. "
        "Reinstall them (`apt-get install --reinstall dataset-fashion-mnist`) or "
        "replace them with intact copies."
      )
    if labels.size and labels.max() >= 10:
      raise _corrupt(labels_path, f"label {int(labels.max())} is out of range 0..9")
    images = images[..., None]  # [N,28,28] -> [N,28,28,1]
    labels = labels.astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    arrays += [images, labels]
  return tuple(arrays)


def _corrupt(path: str, problem: str) -> DataError:
  return DataError(
    f"{path} is corrupt: {problem}. Replace it with an intact copy (for Fashion-MNIST: "
    "`apt-get install --reinstall dataset-fashion-mnist`, or the original files in the "
    "folder given by --data_dir / ARSP_DATA_DIR)."
  )


def _read_idx(path: str, expected_magic: int) -> np.ndarray:
  """Parses a gzip-compressed IDX file of unsigned bytes.

  Header (big-endian): magic int32 (0x0000 08 ND: unsigned bytes, ND dims),
  then ND uint32 dimension sizes, then prod(dims) bytes of data.

  Returns:
    uint8 array of shape dims.
  """
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise _corrupt(path, f"cannot decompress it ({type(e).__name__}: {e})") from e
  if len(raw) < 4:
    raise _corrupt(path, f"only {len(raw)} bytes after decompression")
  magic = int.from_bytes(raw[:4], "big")
  if magic != expected_magic:
    raise _corrupt(path, f"magic number {magic} instead of {expected_magic}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise _corrupt(path, "header truncated")
  dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  expected = math.prod(dims)
  if len(raw) - header != expected:
    raise _corrupt(
      path,
      f"header announces shape {dims} ({expected} bytes) but {len(raw) - header} "
      "bytes of data follow",
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


# ----------------------------------------------------------------------------
# CIFAR-10 (python pickles).
# ----------------------------------------------------------------------------


def _cifar_help(data_dir: str | None) -> str:
  return (
    f"Fix: on a machine with internet download {CIFAR10_URL}, extract it with "
    "`tar xzf cifar-10-python.tar.gz` (creates the folder cifar-10-batches-py holding "
    f"{', '.join(CIFAR10_FILES)}), copy that folder here and pass "
    "--data_dir=<the folder containing cifar-10-batches-py> (or set "
    f"{DATA_DIR_ENV}). Alternatively pass a --data_dir holding a tensorflow-datasets copy "
    "made with `tfds build cifar10 --data_dir=DIR --file_format=array_record`."
  )


def _load_cifar10(data_dir: str | None, kwargs: Mapping[str, Any]) -> _Source:
  """Reads the cifar-10-batches-py pickles (or a prepared tfds copy).

  Looked up in data_dir, then $ARSP_DATA_DIR, each either being the
  cifar-10-batches-py folder or containing it.
  """
  bases = [b for b in (data_dir, _env_data_dir()) if b]
  if not bases:
    raise DataError(
      "cifar10 needs its data files and no --data_dir was given. " + _cifar_help(data_dir)
    )
  report = []
  for base in bases:
    if not os.path.isdir(base):
      report.append(f"{base}: directory does not exist")
      continue
    for directory in (base, os.path.join(base, CIFAR10_FOLDER)):
      if not os.path.isdir(directory):
        continue
      missing = [f for f in CIFAR10_FILES if not os.path.isfile(os.path.join(directory, f))]
      if not missing:
        _reject_options("cifar10", kwargs, ())  # tfds options only apply to a tfds copy
        stats = tuple(os.stat(os.path.join(directory, f)) for f in CIFAR10_FILES)
        signature = (directory,) + tuple((s.st_size, s.st_mtime_ns) for s in stats)
        arrays = _read_cifar10(signature)
        logger.info("cifar10: read from %s", directory)
        return _ArraySource(
          images={"train": arrays[0], "test": arrays[2]},
          labels={"train": arrays[1], "test": arrays[3]},
          num_classes=10,
          crop_pad=4,
        )
      report.append(f"{directory}: missing {', '.join(missing)}")
    if os.path.isdir(os.path.join(base, "cifar10")):
      logger.info("cifar10: no pickles in %s, using its tensorflow-datasets copy", base)
      return _load_tfds("cifar10", base, kwargs)
  raise DataError(
    "CIFAR-10 files not found. Searched " + "; ".join(report) + ". " + _cifar_help(data_dir)
  )


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that only rebuilds numpy arrays (CIFAR pickles need nothing else).

  Refusing every other global makes a malicious or corrupt pickle fail
  instead of executing code.
  """

  _ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
    if module == "numpy.core.multiarray":  # old pickles; avoid numpy.core's deprecation
      module = "numpy._core.multiarray"
    return super().find_class(module, name)


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR pickle -> (uint8 [N,32,32,3] NHWC, int32 [N])."""

  def corrupt(problem: str) -> DataError:
    return DataError(
      f"{path} is not a valid CIFAR-10 batch: {problem}. Replace the cifar-10-batches-py "
      f"folder with a fresh extraction of {CIFAR10_URL}."
    )

  try:
    with open(path, "rb") as f:
      batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
  except Exception as e:  # any unpickling failure means a bad file
    raise corrupt(f"cannot unpickle it ({type(e).__name__}: {e})") from e
  if not isinstance(batch, dict):
    raise corrupt(f"expected a dict, found {type(batch).__name__}")
  data = batch.get(b"data", batch.get("data"))
  labels = batch.get(b"labels", batch.get("labels"))
  if data is None or labels is None:
    raise corrupt(f"keys b'data' and b'labels' required, found {sorted(map(repr, batch))}")
  data = np.asarray(data)
  try:
    labels = np.asarray(labels, np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise corrupt(f"labels are not integers ({e})") from e
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise corrupt(f"data must be uint8 [N, 3072], found {data.dtype} {list(data.shape)}")
  if data.shape[0] != labels.shape[0]:
    raise corrupt(f"{data.shape[0]} images but {labels.shape[0]} labels")
  if labels.size and (labels.min() < 0 or labels.max() >= 10):
    raise corrupt(f"labels must be in 0..9, found {labels.min()}..{labels.max()}")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


@functools.lru_cache(maxsize=2)
def _read_cifar10(signature: tuple) -> tuple[np.ndarray, ...]:
  """(train images, train labels, test images, test labels); cached by file stat."""
  directory = signature[0]
  parts = [_read_cifar_batch(os.path.join(directory, f)) for f in CIFAR10_FILES]
  train_images = np.concatenate([p[0] for p in parts[:5]])
  train_labels = np.concatenate([p[1] for p in parts[:5]])
  arrays = (train_images, train_labels, parts[5][0], parts[5][1])
  for a in arrays:
    a.flags.writeable = False
  return arrays


# ----------------------------------------------------------------------------
# Synthetic.
# ----------------------------------------------------------------------------


def _make_synthetic(
  image_shape: tuple, num_classes: int, num_train: int, num_test: int, seed: int
) -> _ArraySource:
  """Generates a class-structured image classification problem.

  Each class k has a fixed random smooth prototype: a sum of low-frequency
  2-D cosines per channel (random amplitudes decaying with frequency, random
  phases). An example of class k is the prototype evaluated on a randomly
  scaled (0.8-1.25x) and shifted (up to 1/8 of the image) grid, times a
  random amplitude (0.7-1.3), plus a distractor (the prototype of another
  class, own scale / shift, amplitude 0.3-0.6) plus Gaussian pixel noise
  (std 1.2; prototypes have unit RMS). Learnable, but not separable by a
  linear model. Deterministic from ``seed``.

  Returns:
    an _ArraySource with float32 images [N,H,W,C].
  """
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise DataError(
      f"synthetic image_shape must be (H, W, C) with positive sizes, got {image_shape}."
    )
  if num_classes < 2 or num_train < 1 or num_test < 1:
    raise DataError(
      "synthetic needs num_classes >= 2, num_train >= 1 and num_test >= 1, got "
      f"num_classes={num_classes}, num_train={num_train}, num_test={num_test}."
    )
  h, w, c = (int(d) for d in image_shape)
  nbytes = (num_train + num_test) * h * w * c * 4
  if nbytes > _SYNTHETIC_MAX_BYTES:
    raise DataError(
      f"synthetic data of shape {image_shape} with {num_train + num_test} examples would "
      f"need {nbytes / 2**30:.1f} GiB of memory; reduce num_train / num_test or image_shape."
    )

  rng = _rng(seed, _TAG_SYNTHETIC)
  freq = 4  # vertical frequencies 0..3, horizontal -3..3 (cycles per image)
  fy = np.arange(freq)
  fx = np.arange(-(freq - 1), freq)
  decay = 1.0 / (1.0 + fy[:, None] ** 2 + fx[None, :] ** 2)
  coeff = rng.normal(size=(num_classes, c, freq, 2 * freq - 1)) * decay
  coeff[:, :, 0, :freq] = 0.0  # no constant term; drop duplicated (0, -b) terms
  z = coeff * np.exp(1j * rng.uniform(0, 2 * np.pi, size=coeff.shape))  # [K,C,Fy,Fx]
  # Normalise every prototype to unit RMS over its (un-shifted) grid.
  protos = _render(
    z,
    np.arange(num_classes),
    np.ones(num_classes),
    np.zeros(num_classes),
    np.zeros(num_classes),
    h,
    w,
    fy,
    fx,
  )
  z = z / np.sqrt(np.mean(protos**2, axis=(1, 2, 3)))[:, None, None, None]

  def make_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(num_classes, size=n)
    other = (labels + rng.integers(1, num_classes, size=n)) % num_classes
    images = np.empty((n, h, w, c), np.float32)
    for start in range(0, n, 1024):
      sl = slice(start, min(start + 1024, n))
      m = sl.stop - sl.start
      main = _render(
        z,
        labels[sl],
        rng.uniform(0.8, 1.25, m),
        rng.uniform(-0.125, 0.125, m),
        rng.uniform(-0.125, 0.125, m),
        h,
        w,
        fy,
        fx,
      )
      distractor = _render(
        z,
        other[sl],
        rng.uniform(0.8, 1.25, m),
        rng.uniform(-0.125, 0.125, m),
        rng.uniform(-0.125, 0.125, m),
        h,
        w,
        fy,
        fx,
      )
      x = (
        main * rng.uniform(0.7, 1.3, (m, 1, 1, 1))
        + distractor * rng.uniform(0.3, 0.6, (m, 1, 1, 1))
        + rng.normal(0.0, 1.2, (m, h, w, c))
      )
      images[sl] = x
    images.flags.writeable = False
    return images, labels.astype(np.int32)

  train_images, train_labels = make_split(num_train)
  test_images, test_labels = make_split(num_test)
  return _ArraySource(
    images={"train": train_images, "test": test_images},
    labels={"train": train_labels, "test": test_labels},
    num_classes=num_classes,
  )


def _render(
  z: np.ndarray,
  classes: np.ndarray,
  scale: np.ndarray,
  shift_y: np.ndarray,
  shift_x: np.ndarray,
  h: int,
  w: int,
  fy: np.ndarray,
  fx: np.ndarray,
) -> np.ndarray:
  """Evaluates class patterns on per-example scaled / shifted grids.

  pattern(y, x) = Re sum_{a,b} z[k,c,a,b] exp(2 pi i (fy_a y' + fx_b x')),
  y' = (y - 1/2) / scale + 1/2 + shift_y (coordinates in image units).

  Args:
    z: complex [K,C,Fy,Fx] coefficients; classes/scale/shift_*: [M].
  Returns:
    float64 [M,H,W,C].
  """
  y = (np.arange(h) + 0.5) / h - 0.5
  x = (np.arange(w) + 0.5) / w - 0.5
  yy = y[None, :] / scale[:, None] + 0.5 + shift_y[:, None]  # [M,H]
  xx = x[None, :] / scale[:, None] + 0.5 + shift_x[:, None]  # [M,W]
  ey = np.exp(2j * np.pi * fy[None, :, None] * yy[:, None, :])  # [M,Fy,H]
  ex = np.exp(2j * np.pi * fx[None, :, None] * xx[:, None, :])  # [M,Fx,W]
  rows = np.swapaxes(z[classes], 2, 3) @ ey[:, None]  # [M,C,Fx,H]
  rows = np.swapaxes(rows, 2, 3)  # [M,C,H,Fx]
  out = rows.real @ ex.real[:, None] - rows.imag @ ex.imag[:, None]  # [M,C,H,W]
  return out.transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------
# tensorflow-datasets (random access through tfds.data_source).
# ----------------------------------------------------------------------------


class _TfdsSource(_Source):
  """Decodes tfds examples one by one into preprocessed uint8 images.

  Modes:
    "native": fixed-size images used at their own size; eval = identity,
      train = random crop (zero padding size/8) + flip, like cifar10.
    "resize": eval = resize the shorter side to size*256/224 and centre-crop
      size; train = random-resized-crop (scale 0.08-1, ratio 3/4-4/3) to
      size + horizontal flip.
  Standardised with the fixed ImageNet mean / std.
  """

  def __init__(
    self,
    sources: Mapping[str, Sequence],
    *,
    size: int,
    channels: int,
    mode: str,
    num_classes: int,
    image_key: str,
    label_key: str,
    num_workers: int,
  ):
    self.sources = dict(sources)
    self.size = int(size)
    self.mode = mode
    self.image_shape = (self.size, self.size, int(channels))
    self.num_classes = int(num_classes)
    self.sizes = {k: len(v) for k, v in self.sources.items()}
    self.image_key, self.label_key = image_key, label_key
    self.aug_dim = 3 if mode == "native" else 4 * _RRC_TRIES + 1
    self.crop_pad = max(1, self.size // 8)
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    if channels != 3:
      mean, std = np.full(channels, mean.mean()), np.full(channels, std.mean())
    self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
    self._pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 1 else None

  def _example(self, split: str, index: int, aug: np.ndarray | None) -> tuple[np.ndarray, int]:
    example = self.sources[split][int(index)]
    image = np.asarray(example[self.image_key])
    if image.ndim == 2:
      image = image[:, :, None]
    if self.mode == "native":
      if image.shape != self.image_shape:
        image = _resize_box(image, (0, 0, image.shape[1], image.shape[0]), self.size)
    elif aug is None:
      image = _resize_box(image, _center_box(*image.shape[:2], self.size), self.size)
    else:
      top, left, ch, cw = _random_resized_crop_box(*image.shape[:2], aug)
      image = _resize_box(image, (left, top, left + cw, top + ch), self.size)
      if aug[-1] < 0.5:
        image = image[:, ::-1]
    return image, int(example[self.label_key])

  def load(self, split, indices, aug):
    rows = [
      aug[i] if aug is not None and self.mode == "resize" else None for i in range(len(indices))
    ]
    if self._pool is not None and len(indices) > 1:
      results = list(self._pool.map(self._example, [split] * len(indices), indices, rows))
    else:
      results = [self._example(split, i, r) for i, r in zip(indices, rows)]
    images = np.stack([r[0] for r in results]).astype(np.float32)
    images -= self.mean
    images /= self.std
    if aug is not None and self.mode == "native":
      images = _crop_flip(images, aug, self.crop_pad)
    return images, np.asarray([r[1] for r in results], np.int32)


def _center_box(h: int, w: int, size: int) -> tuple[float, float, float, float]:
  """(left, top, right, bottom) in source pixels of the eval crop.

  Equivalent to resizing the shorter side to size*256/224 and taking the
  central size x size window.
  """
  side = min(h, w) * size / round(size * 256 / 224)
  top, left = (h - side) / 2, (w - side) / 2
  return (left, top, left + side, top + side)


def _random_resized_crop_box(h: int, w: int, u: np.ndarray) -> tuple[int, int, int, int]:
  """(top, left, crop_h, crop_w) of an Inception-style random crop.

  Area fraction in [0.08, 1], aspect ratio log-uniform in [3/4, 4/3];
  ``_RRC_TRIES`` attempts from ``u`` (4 uniforms each), then a centre crop
  with the ratio clamped to [3/4, 4/3].
  """
  area = h * w
  lo, hi = math.log(3 / 4), math.log(4 / 3)
  for t in range(_RRC_TRIES):
    target = area * (0.08 + 0.92 * u[4 * t])
    ratio = math.exp(lo + (hi - lo) * u[4 * t + 1])
    cw = int(round(math.sqrt(target * ratio)))
    ch = int(round(math.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = min(int(u[4 * t + 2] * (h - ch + 1)), h - ch)
      left = min(int(u[4 * t + 3] * (w - cw + 1)), w - cw)
      return top, left, ch, cw
  if w / h < 3 / 4:
    cw, ch = w, min(h, int(round(w * 4 / 3)))
  elif w / h > 4 / 3:
    ch, cw = h, min(w, int(round(h * 4 / 3)))
  else:
    ch, cw = h, w
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize_box(image: np.ndarray, box: tuple, size: int) -> np.ndarray:
  """Crops ``box`` (left, top, right, bottom) of image [h,w,C], resizes to [size,size,C].

  Bilinear; uint8 with 1 or 3 channels goes through PIL directly, anything
  else channel by channel in float mode.
  """
  from PIL import Image

  if image.dtype == np.uint8 and image.shape[2] in (1, 3):
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))
    return out.reshape(size, size, image.shape[2])
  channels = [
    np.asarray(
      Image.fromarray(image[:, :, k].astype(np.float32), mode="F").resize(
        (size, size), Image.BILINEAR, box=box
      )
    )
    for k in range(image.shape[2])
  ]
  return np.stack(channels, axis=-1)


def _tfds_prepare_help(name: str, data_dir: str) -> str:
  base = name.split("/")[0].split(":")[0]
  if base.startswith("imagenet2012"):
    return (
      "ImageNet cannot be downloaded automatically: on any machine, get "
      "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org "
      f"(registration required), put them in {data_dir}/downloads/manual/, then run "
      f"`pip install tensorflow tensorflow-datasets && tfds build {name} "
      f"--data_dir={data_dir} --file_format=array_record` and pass --data_dir={data_dir}."
    )
  return (
    "Prepare it on a machine with internet access: `pip install tensorflow "
    f"tensorflow-datasets && tfds build {name} --data_dir=DIR --file_format=array_record`, "
    f"copy DIR here and pass --data_dir=DIR (nothing is downloaded at run time)."
  )


def _load_tfds(name: str, data_dir: str | None, options: Mapping[str, Any]) -> _TfdsSource:
  """Opens train / test of a prepared tfds dataset with ``tfds.data_source`` (never downloads).

  ``options``: image_size, test_split, image_key, label_key, num_workers
  (see :func:`load_dataset`).
  """
  known = ", ".join(DATASETS)
  head = name.split("/")[0]
  if ":" in head and not head.split(":", 1)[1][:1].isdigit():
    raise DataError(
      f"Community / namespaced dataset {name!r} is not supported (it would need network "
      f"access). Use one of {known} or a tensorflow-datasets catalog name."
    )
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(
      f"Unknown dataset {name!r}. Known datasets: {known}; other names are looked up in "
      "tensorflow-datasets, which is not installed (`pip install tensorflow-datasets`)."
    ) from e
  dir_text = data_dir or "~/tensorflow_datasets (the tfds default)"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
      f"Unknown dataset {name!r}. Known datasets: {known}, or any tensorflow-datasets "
      "builder name (https://www.tensorflow.org/datasets/catalog), e.g. imagenet2012. "
      "Check the spelling of --dataset."
    ) from e
  except Exception as e:  # bad config / version syntax etc.
    raise DataError(
      f"tensorflow-datasets cannot open dataset {name!r} in {dir_text}: "
      f"{type(e).__name__}: {e}. Check --dataset and --data_dir."
    ) from e
  _reject_options(name, options, _TFDS_OPTIONS)
  image_size = options.get("image_size")
  test_split = options.get("test_split")
  image_key = options.get("image_key", "image")
  label_key = options.get("label_key", "label")
  num_workers = options.get("num_workers")

  features = builder.info.features
  for key, role in ((image_key, "image"), (label_key, "label")):
    if key not in features:
      raise DataError(
        f"Dataset {name!r} has no feature {key!r} (features: {sorted(features.keys())}); "
        f"pass {role}_key=<feature name> to load_dataset."
      )
  num_classes = getattr(features[label_key], "num_classes", None)
  if not num_classes:
    raise DataError(
      f"Feature {label_key!r} of {name!r} is not a class label; this trainer "
      "needs an image classification dataset."
    )

  try:
    split_names = set(builder.info.splits.keys())
  except Exception:  # not prepared: split information unknown
    split_names = set()
  if test_split is None:
    imagenet = head.split(":")[0].startswith("imagenet")
    if imagenet and (not split_names or "validation" in split_names):
      test_split = "validation"  # ImageNet's "test" split, if present, has no labels
    elif not split_names or "test" in split_names:
      test_split = "test"
    elif "validation" in split_names:
      test_split = "validation"
    else:
      raise DataError(
        f"Dataset {name!r} has neither a 'test' nor a 'validation' split "
        f"(splits: {sorted(split_names)}); pass test_split=<name>."
      )

  def open_split(split: str):
    try:
      return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
      prepared = False
      try:
        prepared = builder.is_prepared()
      except Exception:
        pass
      if prepared:
        raise DataError(
          f"Found a prepared copy of {name!r} in {builder.data_dir} but cannot read its "
          f"{split!r} split with random access ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''}). tfds.data_source needs the "
          f"ArrayRecord format: rebuild it with `tfds build {name} --data_dir=DIR "
          "--file_format=array_record` and check that split exists."
        ) from e
      raise DataError(
        f"Dataset {name!r} is not prepared in {dir_text}. "
        + _tfds_prepare_help(name, data_dir or "DIR")
      ) from e

  sources = {"train": open_split("train"), "test": open_split(test_split)}

  shape = tuple(features[image_key].shape)
  channels = shape[-1] if len(shape) == 3 and shape[-1] else None
  if channels is None:
    first = np.asarray(sources["train"][0][image_key])
    channels = 1 if first.ndim == 2 else first.shape[-1]
  static_hw = len(shape) == 3 and shape[0] and shape[1]
  if static_hw and shape[0] == shape[1] and image_size in (None, shape[0]):
    mode, size = "native", shape[0]
  else:
    mode = "resize"
    size = image_size or (min(shape[0], shape[1]) if static_hw else 224)
  if num_workers is None:
    num_workers = min(16, os.cpu_count() or 1)
  logger.info(
    "%s: tfds data_source from %s, %s mode at %dx%d, test split %r",
    name,
    dir_text,
    mode,
    size,
    size,
    test_split,
  )
  return _TfdsSource(
    sources,
    size=size,
    channels=channels,
    mode=mode,
    num_classes=num_classes,
    image_key=image_key,
    label_key=label_key,
    num_workers=num_workers,
  )
