"""The :class:`Dataset` every loader returns, its sources and its deterministic, resumable,
per-process batch iterators.

Batches are numpy dicts::

    {"image": float32 [B, H, W, C] (NHWC, standardised),
     "label": int32 [B]}
    # eval batches also carry
     "weight": float32 [B]  (1.0 for real examples, 0.0 for padding)

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

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from arsp_jax.errors import DataError

# Stream tags keep the random streams derived from one seed independent.
TAG_VAL_SPLIT = 1
TAG_SHUFFLE = 2
TAG_AUGMENT = 3
TAG_FIXED = 4
TAG_SYNTHETIC = 5
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


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


def seeded_rng(*keys: int) -> np.random.Generator:
  """A numpy Generator seeded by a tuple of integers (any sign)."""
  return np.random.default_rng([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys])


def reject_options(name: str, kwargs: Mapping[str, Any], allowed: Sequence[str]) -> None:
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise DataError(
      f"Dataset {name!r} does not take the option(s) {unknown}; it accepts "
      f"{sorted(allowed) or 'none'}. Remove them from the command line / config."
    )


# ----------------------------------------------------------------------------
# Sources: map (split, indices) to standardised examples.
# ----------------------------------------------------------------------------


class Source:
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

  #: True when loading decodes examples (worth grain's worker processes); False for arrays.
  decodes: bool = False

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


class ArraySource(Source):
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
    check_splits(self.images, self.labels, self.num_classes)
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
      images = crop_flip(images, aug, self.crop_pad)
    return images, self.labels[split][indices]


def check_splits(images: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], classes: int):
  """``DataError`` unless every split holds [N, H, W, C] images with H, W, C >= 1, the same
  (H, W, C) in every split, as many labels as images, and labels in [0, classes): the
  training and the test images must fit one model."""
  shapes = {k: tuple(int(d) for d in v.shape[1:]) for k, v in images.items()}
  for split, shape in shapes.items():
    if len(shape) != 3 or min(shape) < 1:
      raise DataError(
        f"The {split} images have shape {shape} (height, width, channels): every dimension "
        f"must be at least 1. The data files are corrupt or not images; replace them."
      )
    n, m = int(images[split].shape[0]), int(np.asarray(labels[split]).shape[0])
    if n != m:
      raise DataError(f"The {split} split holds {n} images but {m} labels; replace the files.")
    lab = np.asarray(labels[split])
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= classes):
      raise DataError(
        f"The {split} labels range over {int(lab.min())}..{int(lab.max())}, outside the "
        f"dataset's {classes} classes (0..{classes - 1}); replace the files."
      )
  if len(set(shapes.values())) > 1:
    raise DataError(
      "The splits' images differ in shape ("
      + ", ".join(f"{k}: {v}" for k, v in shapes.items())
      + "): one model cannot take both. The files are from different datasets; use one "
      "dataset's training and test files."
    )


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


def crop_flip(images: np.ndarray, aug: np.ndarray, pad: int) -> np.ndarray:
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
  input_workers: int = 0  # grain worker processes of a decoding source (0: grain in this process)
  _source: Source | None = dataclasses.field(default=None, repr=False, compare=False)
  _indices: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @classmethod
  def from_source(
    cls,
    name: str,
    source: Source,
    *,
    val_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    input_workers: int = 0,
  ) -> Dataset:
    """The dataset of ``source`` with ``val_size`` training examples held out (from ``seed``)."""
    num_train_raw = source.sizes["train"]
    if num_train_raw == 0 or source.sizes.get("test", 1) == 0:
      empty = "training" if num_train_raw == 0 else "test"
      raise DataError(
        f"The {empty} split of {name!r} is empty: there is nothing to "
        f"{'train on' if empty == 'training' else 'evaluate on'}. Check the data files."
      )
    if val_size >= num_train_raw:
      raise DataError(
        f"--val_size={val_size} is too large: the training split of {name!r} has only "
        f"{num_train_raw} examples and the validation split is carved out of it. Use "
        f"--val_size={min(5000, num_train_raw // 10)} (or 0 for no validation split)."
      )
    perm = seeded_rng(seed, TAG_VAL_SPLIT).permutation(num_train_raw)
    val_idx = np.sort(perm[:val_size])
    train_idx = np.sort(perm[val_size:])
    source.fit_standardisation(train_idx)
    return cls(
      name=name,
      image_shape=tuple(int(d) for d in source.image_shape),
      num_classes=int(source.num_classes),
      num_train=len(train_idx),
      num_val=len(val_idx),
      num_test=int(source.sizes["test"]),
      process_index=int(process_index),
      process_count=int(process_count),
      input_workers=int(input_workers),
      _source=source,
      _indices={
        "train": ("train", train_idx),
        "val": ("train", val_idx),
        "test": ("test", np.arange(source.sizes["test"])),
      },
    )

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
    _, indices = self._split("train")
    order = indices[seeded_rng(seed, TAG_SHUFFLE, epoch).permutation(len(indices))]
    if self._source.decodes:
      from arsp_jax.data import grain_loader  # noqa: PLC0415

      return grain_loader.train_batches(
        self, order, start_step, steps, global_batch_size, seed, epoch, self.input_workers
      )

    def generate():
      for step in range(start_step, steps):
        yield self.step_batch(order, step, global_batch_size, seed, epoch)

    return generate()

  def step_batch(
    self, order: np.ndarray, step: int, global_batch_size: int, seed: int, epoch: int
  ) -> dict:
    """This process's slice of the global training batch ``step`` of an epoch whose order is
    ``order``, augmented from ``(seed, epoch, step)``."""
    raw, _ = self._indices["train"]
    batch = order[step * global_batch_size : (step + 1) * global_batch_size]
    aug = None
    if self._source.aug_dim:
      aug = seeded_rng(seed, TAG_AUGMENT, epoch, step).random(
        (global_batch_size, self._source.aug_dim)
      )
      aug = self._slice(aug)
    images, labels = self._source.load(raw, self._slice(batch), aug)
    return {"image": images, "label": labels}

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
    raw, chosen = self._fixed_indices(split, size, seed)
    images, labels = self._source.load(raw, chosen, None)
    return {"image": images, "label": labels}

  def held_out(self, split: str, size: int, seed: int) -> dict:
    """The examples of ``split`` that ``fixed_batch(split, size, seed)`` does not hold, in
    order, eval preprocessing: e.g. the validation images the agent's reward never reads
    (``bench/reward.py`` validates the reward against accuracy on them).

    Returns:
      {"image": float32 [m,H,W,C], "label": int32 [m]} (m may be 0).
    """
    raw, chosen = self._fixed_indices(split, size, seed)
    _, indices = self._split(split)
    rest = np.setdiff1d(indices, chosen)
    images, labels = self._source.load(raw, rest, None)
    return {"image": images, "label": labels}

  def _fixed_indices(self, split: str, size: int, seed: int) -> tuple[str, np.ndarray]:
    if size <= 0:
      raise DataError(f"fixed_batch size must be positive, got {size}.")
    raw, indices = self._split(split)
    rng = seeded_rng(seed, TAG_FIXED, _SPLIT_IDS[split])
    reps = -(-size // len(indices))
    return raw, np.concatenate([rng.permutation(indices) for _ in range(reps)])[:size]
