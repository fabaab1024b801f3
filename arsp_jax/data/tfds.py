"""Any tensorflow-datasets image classification dataset, read with random access through
``tfds.data_source`` from a copy already prepared (ArrayRecord format) in ``data_dir``.
Works without TensorFlow; nothing is ever downloaded.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from arsp_jax.data.dataset import Source, crop_flip, reject_options
from arsp_jax.errors import DataError

logger = logging.getLogger(__name__)

#: Datasets handled by this package's own loaders. Any tensorflow-datasets builder name
#: (e.g. ``"imagenet2012"``) is accepted as well, read from a prepared ``data_dir``.
DATASETS = ("fashion_mnist", "cifar10", "synthetic")

#: ImageNet per-channel mean / std in uint8 pixel units (used for tfds datasets).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

TFDS_OPTIONS = ("image_size", "test_split", "image_key", "label_key", "num_workers")
_RRC_TRIES = 10  # random-resized-crop attempts before the centre-crop fallback

# ----------------------------------------------------------------------------
# tensorflow-datasets (random access through tfds.data_source).
# ----------------------------------------------------------------------------


class TfdsSource(Source):
  """Decodes tfds examples one by one into preprocessed uint8 images.

  Modes:
    "native": fixed-size images used at their own size; eval = identity,
      train = random crop (zero padding size/8) + flip, like cifar10.
    "resize": eval = resize the shorter side to size*256/224 and centre-crop
      size; train = random-resized-crop (scale 0.08-1, ratio 3/4-4/3) to
      size + horizontal flip.
  Standardised with the fixed ImageNet mean / std. Training batches go through grain
  (:mod:`arsp_jax.data.grain_loader`); a copy in a grain worker decodes in one thread.
  """

  decodes = True

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

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_pool"] = None  # a thread pool does not pickle; a worker process decodes serially
    return state

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
      top, left, ch, cw = random_resized_crop_box(*image.shape[:2], aug)
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
      images = crop_flip(images, aug, self.crop_pad)
    return images, np.asarray([r[1] for r in results], np.int32)


def _center_box(h: int, w: int, size: int) -> tuple[float, float, float, float]:
  """(left, top, right, bottom) in source pixels of the eval crop.

  Equivalent to resizing the shorter side to size*256/224 and taking the
  central size x size window.
  """
  side = min(h, w) * size / round(size * 256 / 224)
  top, left = (h - side) / 2, (w - side) / 2
  return (left, top, left + side, top + side)


def random_resized_crop_box(h: int, w: int, u: np.ndarray) -> tuple[int, int, int, int]:
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


def load_tfds(name: str, data_dir: str | None, options: Mapping[str, Any]) -> TfdsSource:
  """Opens train / test of a prepared tfds dataset with ``tfds.data_source`` (never downloads).

  ``options``: image_size, test_split, image_key, label_key, num_workers
  (see :func:`arsp_jax.data.load_dataset`).
  """
  tfds, builder = _builder(name, data_dir)
  reject_options(name, options, TFDS_OPTIONS)
  image_size = options.get("image_size")
  image_key = options.get("image_key", "image")
  label_key = options.get("label_key", "label")
  num_workers = options.get("num_workers")
  features = builder.info.features
  num_classes = _num_classes(name, features, image_key, label_key)
  test_split = options.get("test_split") or _test_split(name, builder)
  sources = {
    "train": _open_split(tfds, builder, name, "train", data_dir),
    "test": _open_split(tfds, builder, name, test_split, data_dir),
  }
  mode, size, channels = _geometry(sources["train"], features[image_key], image_key, image_size)
  if num_workers is None:
    num_workers = min(16, os.cpu_count() or 1)
  logger.info(
    "%s: tfds data_source from %s, %s mode at %dx%d, test split %r",
    name,
    _dir_text(data_dir),
    mode,
    size,
    size,
    test_split,
  )
  return TfdsSource(
    sources,
    size=size,
    channels=channels,
    mode=mode,
    num_classes=num_classes,
    image_key=image_key,
    label_key=label_key,
    num_workers=num_workers,
  )


def _dir_text(data_dir: str | None) -> str:
  return data_dir or "~/tensorflow_datasets (the tfds default)"


def _builder(name: str, data_dir: str | None):
  """(the tfds module, the dataset's builder); ``DataError`` for names tfds cannot open."""
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
  try:
    return tfds, tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
      f"Unknown dataset {name!r}. Known datasets: {known}, or any tensorflow-datasets "
      "builder name (https://www.tensorflow.org/datasets/catalog), e.g. imagenet2012. "
      "Check the spelling of --dataset."
    ) from e
  except Exception as e:  # bad config / version syntax etc.
    raise DataError(
      f"tensorflow-datasets cannot open dataset {name!r} in {_dir_text(data_dir)}: "
      f"{type(e).__name__}: {e}. Check --dataset and --data_dir."
    ) from e


def _num_classes(name: str, features, image_key: str, label_key: str) -> int:
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
  return num_classes


def _test_split(name: str, builder) -> str:
  """The split evaluated as "test" when ``test_split`` is not given."""
  try:
    split_names = set(builder.info.splits.keys())
  except Exception:  # not prepared: split information unknown
    split_names = set()
  imagenet = name.split("/")[0].split(":")[0].startswith("imagenet")
  if imagenet and (not split_names or "validation" in split_names):
    return "validation"  # ImageNet's "test" split, if present, has no labels
  if not split_names or "test" in split_names:
    return "test"
  if "validation" in split_names:
    return "validation"
  raise DataError(
    f"Dataset {name!r} has neither a 'test' nor a 'validation' split "
    f"(splits: {sorted(split_names)}); pass test_split=<name>."
  )


def _open_split(tfds, builder, name: str, split: str, data_dir: str | None):
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
      f"Dataset {name!r} is not prepared in {_dir_text(data_dir)}. "
      + _tfds_prepare_help(name, data_dir or "DIR")
    ) from e


def _geometry(train, feature, image_key: str, image_size: int | None) -> tuple[str, int, int]:
  """(mode, image size, channels): native size for fixed-size square images, else resize."""
  shape = tuple(feature.shape)
  channels = shape[-1] if len(shape) == 3 and shape[-1] else None
  if channels is None:
    first = np.asarray(train[0][image_key])
    channels = 1 if first.ndim == 2 else first.shape[-1]
  static_hw = len(shape) == 3 and shape[0] and shape[1]
  if static_hw and shape[0] == shape[1] and image_size in (None, shape[0]):
    return "native", shape[0], channels
  return "resize", image_size or (min(shape[0], shape[1]) if static_hw else 224), channels
