"""Shared helpers for tests: tiny, fast configurations of the real pipeline."""

from arsp_jax import configs as config_lib

#: What tiny_config changes in the synthetic preset (the one source of the tiny settings).
TINY = {
  "dataset_kwargs.image_shape": (28, 28, 1),
  "dataset_kwargs.num_classes": 10,
  "dataset_kwargs.num_train": 512,
  "dataset_kwargs.num_test": 128,
  "val_size": 128,
  "model_kwargs.hidden": (32, 32),
  "batch_size": 64,
  "eval_batch_size": 64,
  "epochs": 1,
  "arsp.epochs": 2,
  "finetune.epochs": 1,
  "arsp.prune_every": 4,
  "arsp.population": 4,
  "arsp.recovery_steps": 2,
  "arsp.recovery_batch": 16,
  # every round searches: one compiled round, no lax.cond between searching and applying (the
  # schedule has its own test, tests/test_methods.py)
  "arsp.search_after_budget": -1,
  "arsp.calib_size": 64,
  "arsp.reward_size": 64,
  "arsp.score": "taylor",
  "arsp.temperature": 1.0,
  "arsp.target_sparsity": 0.7,
  "log_every": 4,
  "keep_checkpoints": 10,
  "num_devices": 1,
  # Learning rates sized for 8-step epochs (the defaults are sized for real runs).
  "lr_schedule": "constant",
  "arsp.learning_rate": 1e-3,
  "arsp.budget_fraction": 0.75,
}


def tiny_config(**overrides):
  """A synthetic-data ARSP config that runs in seconds on 2 CPU cores.

  Shapes match Fashion-MNIST (28x28x1, 10 classes) and the split sizes give 8 steps per epoch,
  so tests on the synthetic data and on a real Fashion-MNIST subset compile the same programs
  (the persistent compilation cache in conftest.py then compiles each once per session).
  Sampling is on (temperature 1, taylor scores); the agent scores 4 candidates per round.
  """
  return config_lib.apply_overrides(config_lib.get_config("synthetic"), {**TINY, **overrides})


def as_set(key, value) -> str:
  """``key=value`` as ``--set`` (and the study's variants) parse it back to ``value``."""
  text = "(" + ",".join(map(str, value)) + ")" if isinstance(value, tuple) else str(value)
  return f"{key}={text}"


# tiny_config as "key=value" settings, for train.py --set and the comparison harness
# (tests/test_reliability.py checks that train.py with these flags builds tiny_config exactly).
TINY_SETS = [as_set(k, v) for k, v in TINY.items()]


def subprocess_env(**extra):
  """Environment for a train.py/eval.py subprocess: one CPU device, the tests' compile cache."""
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env.update(
    {
      "JAX_PLATFORMS": "cpu",
      # one device; the tests' compiler settings (tests/conftest.py)
      "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
      "JAX_COMPILATION_CACHE_DIR": os.path.join(root, ".jax_cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
  )
  env.update(extra)
  return env


# -- tiny datasets in the real on-disk formats --------------------------------

import gzip  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402

import numpy as np  # noqa: E402

FMNIST_FILES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SYSTEM_FMNIST = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array, magic=None, dims=None):
  """Writes a gzip IDX file of uint8 ``array`` (header may be overridden to corrupt it)."""
  array = np.asarray(array, np.uint8)
  magic = magic if magic is not None else 0x800 + array.ndim
  dims = dims if dims is not None else array.shape
  header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def read_idx(path):
  with gzip.open(path, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_fmnist_subset(out_dir, n_train, n_test, src=SYSTEM_FMNIST):
  """Copies the first examples of the real Fashion-MNIST files into new IDX files."""
  os.makedirs(out_dir, exist_ok=True)
  for key, name in FMNIST_FILES.items():
    arr = read_idx(os.path.join(src, name))
    write_idx(os.path.join(out_dir, name), arr[: n_train if key.startswith("train") else n_test])
  return str(out_dir)


def write_cifar_batch(path, images, labels):
  """One pickle in the canonical cifar-10-batches-py format (images uint8 NHWC)."""
  batch = {
    b"batch_label": b"fake",
    b"labels": [int(x) for x in labels],
    b"data": np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), 3072),
    b"filenames": [b"f%d.png" % i for i in range(len(images))],
  }
  with open(path, "wb") as f:
    pickle.dump(batch, f, protocol=2)


def write_cifar_dir(root, per_batch=16, n_test=32, seed=0):
  """``root/cifar-10-batches-py`` with 5 data batches and a test batch of class-dependent images."""
  rng = np.random.default_rng(seed)
  d = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(d, exist_ok=True)

  def make(n):
    labels = rng.integers(0, 10, n)
    base = (labels[:, None, None, None] * 25).astype(np.int64)
    imgs = np.clip(base + rng.integers(0, 40, (n, 32, 32, 3)), 0, 255)
    return imgs.astype(np.uint8), labels

  for i in range(5):
    write_cifar_batch(os.path.join(d, f"data_batch_{i + 1}"), *make(per_batch))
  write_cifar_batch(os.path.join(d, "test_batch"), *make(n_test))
  return str(root)


# -- a tiny tensorflow-datasets dataset, prepared for real (ArrayRecord files) ----------------


def prepare_tiny_tfds(data_dir: str, num_train: int = 48, num_test: int = 16) -> str:
  """Prepares ``tiny_images`` in ``data_dir`` as ``tfds build`` would (ArrayRecord files and
  dataset_info), with RGB images of varying sizes (20-40 px, stored as raw uint8 tensors:
  encoding JPEG/PNG needs TensorFlow); read back by name from the files, like any dataset
  prepared elsewhere. Returns the dataset name."""
  import tensorflow_datasets as tfds

  # Not registered: each call (several per test session) defines its own class; the dataset is
  # read back by name from its files.
  class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes")
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {"image": image, "label": tfds.features.ClassLabel(num_classes=3)}
        ),
      )

    def _split_generators(self, dl_manager):
      return {
        "train": self._generate_examples(num_train, 0),
        "test": self._generate_examples(num_test, 1),
      }

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        h, w = (int(x) for x in rng.integers(20, 40, 2))
        label = int(rng.integers(0, 3))
        image = rng.integers(0, 60, (h, w, 3)) + 90 * label  # learnable: brightness = class
        yield i, {"image": image.astype(np.uint8), "label": label}

  TinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return "tiny_images"
