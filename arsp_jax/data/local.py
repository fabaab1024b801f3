"""Datasets read from local files in their canonical formats: Fashion-MNIST (the four IDX
``.gz`` files, parsed with numpy) and CIFAR-10 (the ``cifar-10-batches-py`` pickles).

A ``data_dir`` the user names is used as given: the files are looked up in it (or in its
dataset sub-folder), or the load fails saying what is missing there and how to get it. Only
without one are ``$ARSP_DATA_DIR`` and (Fashion-MNIST) the system folder searched.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import pickle
import zlib
from typing import Any, Mapping

import numpy as np

from arsp_jax.data.dataset import ArraySource, Source, reject_options
from arsp_jax.data.tfds import load_tfds
from arsp_jax.errors import DataError

logger = logging.getLogger(__name__)

#: Environment variable consulted when no ``data_dir`` is given.
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


_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _env_data_dir() -> str | None:
  return os.environ.get(DATA_DIR_ENV) or None


# ----------------------------------------------------------------------------
# Fashion-MNIST (IDX files).
# ----------------------------------------------------------------------------


def load_fashion_mnist(data_dir: str | None) -> ArraySource:
  """Finds the four IDX files and returns an in-memory source (decoded once per process)."""
  directory = _find_fashion_mnist_dir(data_dir)
  paths = [os.path.join(directory, f) for f in FASHION_MNIST_FILES.values()]
  signature = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
  arrays = _read_fashion_mnist(signature)
  logger.info("fashion_mnist: read from %s", directory)
  return _ten_classes(arrays)


def _ten_classes(arrays: tuple[np.ndarray, ...], crop_pad: int = 0) -> ArraySource:
  """The source of (train images, train labels, test images, test labels), 10 classes."""
  return ArraySource(
    images={"train": arrays[0], "test": arrays[2]},
    labels={"train": arrays[1], "test": arrays[3]},
    num_classes=10,
    crop_pad=crop_pad,
  )


def _find_fashion_mnist_dir(data_dir: str | None) -> str:
  """The folder holding all four files: ``data_dir`` (or its fashion-mnist sub-folder) when
  given, else $ARSP_DATA_DIR (likewise), else the system folder."""
  base = data_dir or _env_data_dir()
  candidates = []
  if base:
    candidates = [base, os.path.join(base, "fashion-mnist"), os.path.join(base, "fashion_mnist")]
  if not data_dir:
    candidates.append(SYSTEM_FASHION_MNIST_DIR)
  report = []
  for directory in candidates:
    if not os.path.isdir(directory):
      if directory in (base, SYSTEM_FASHION_MNIST_DIR):
        report.append(f"{directory}: directory does not exist")
      continue
    missing = [
      f for f in FASHION_MNIST_FILES.values() if not os.path.isfile(os.path.join(directory, f))
    ]
    if not missing:
      return directory
    report.append(f"{directory}: missing {', '.join(missing)}")
  where = f" in --data_dir={data_dir} (used as given)" if data_dir else ""
  raise DataError(
    f"Fashion-MNIST files not found{where}. Searched " + "; ".join(report) + ". Fix: put the "
    f"four files ({', '.join(FASHION_MNIST_FILES.values())}) in a folder and pass "
    f"--data_dir=FOLDER or set {DATA_DIR_ENV}=FOLDER, or run `apt-get install "
    f"dataset-fashion-mnist` (installs them into {SYSTEM_FASHION_MNIST_DIR}, searched when no "
    "--data_dir is given)."
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


def load_cifar10(data_dir: str | None, kwargs: Mapping[str, Any]) -> Source:
  """Reads the cifar-10-batches-py pickles (or a prepared tfds copy).

  Looked up in data_dir when given (and only there), else in $ARSP_DATA_DIR; either being
  the cifar-10-batches-py folder or containing it.
  """
  bases = [b for b in (data_dir or _env_data_dir(),) if b]
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
        reject_options("cifar10", kwargs, ())  # tfds options only apply to a tfds copy
        stats = tuple(os.stat(os.path.join(directory, f)) for f in CIFAR10_FILES)
        signature = (directory,) + tuple((s.st_size, s.st_mtime_ns) for s in stats)
        arrays = _read_cifar10(signature)
        logger.info("cifar10: read from %s", directory)
        return _ten_classes(arrays, crop_pad=4)
      report.append(f"{directory}: missing {', '.join(missing)}")
    if os.path.isdir(os.path.join(base, "cifar10")):
      logger.info("cifar10: no pickles in %s, using its tensorflow-datasets copy", base)
      return load_tfds("cifar10", base, kwargs)
  where = f" in --data_dir={data_dir} (used as given)" if data_dir else ""
  raise DataError(
    f"CIFAR-10 files not found{where}. Searched " + "; ".join(report) + ". " + _cifar_help(data_dir)
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
