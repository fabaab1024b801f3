"""Tests for arsp_jax.data on tiny files written in the real on-disk formats."""

import os
import pickle

import numpy as np
import pytest

from arsp_jax import data
from arsp_jax.data import DataError, load_dataset, local
from tests.util import prepare_tiny_tfds, write_cifar_batch, write_idx

N_TRAIN, N_TEST = 64, 32  # fake Fashion-MNIST sizes
CIFAR_PER_BATCH, CIFAR_TEST = 8, 10


# ----------------------------------------------------------------------------
# Fixtures: tiny datasets in the real formats.
# ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_lookup(monkeypatch, tmp_path):
  """Never fall back to the real system files or a user's ARSP_DATA_DIR."""
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(local, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "no-system-dir"))


def fake_images(n, shape, seed):
  """uint8 [n, *shape] random images whose first pixel is the example index."""
  images = np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)
  images.reshape(n, -1)[:, 0] = np.arange(n)
  return images


@pytest.fixture
def fmnist_dir(tmp_path):
  d = tmp_path / "fmnist"
  d.mkdir()
  names = data.FASHION_MNIST_FILES
  write_idx(d / names["train_images"], fake_images(N_TRAIN, (28, 28), 0))
  write_idx(d / names["train_labels"], np.arange(N_TRAIN) % 10)
  write_idx(d / names["test_images"], fake_images(N_TEST, (28, 28), 1))
  write_idx(d / names["test_labels"], np.arange(N_TEST) % 10)
  return d


def cifar_raw():
  """(train uint8 [40,32,32,3] NHWC, train labels, test images, test labels)."""
  n = 5 * CIFAR_PER_BATCH
  return (
    fake_images(n, (32, 32, 3), 2),
    np.arange(n) % 10,
    fake_images(CIFAR_TEST, (32, 32, 3), 3),
    np.arange(CIFAR_TEST) % 10,
  )


@pytest.fixture
def cifar_dir(tmp_path):
  """A folder containing cifar-10-batches-py (the folder --data_dir names)."""
  d = tmp_path / "cifar" / data.CIFAR10_FOLDER
  d.mkdir(parents=True)
  train, train_labels, test, test_labels = cifar_raw()
  for i in range(5):
    sl = slice(i * CIFAR_PER_BATCH, (i + 1) * CIFAR_PER_BATCH)
    write_cifar_batch(d / f"data_batch_{i + 1}", train[sl], train_labels[sl])
  write_cifar_batch(d / "test_batch", test, test_labels)
  return d.parent


def ids(batch, ds):
  """Recovers the example indices encoded in the first pixel (undoing standardisation)."""
  return np.rint(batch["image"][:, 0, 0, 0] * ds.std[0] + ds.mean[0]).astype(int)


def epoch_ids(ds, epoch, gbs, seed, **kw):
  return [ids(b, ds) for b in ds.train_batches(epoch, gbs, seed, **kw)]


# ----------------------------------------------------------------------------
# Fashion-MNIST from IDX files.
# ----------------------------------------------------------------------------


def test_fashion_mnist_shapes_and_dtypes(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16)
  assert (ds.name, ds.image_shape, ds.num_classes) == ("fashion_mnist", (28, 28, 1), 10)
  assert (ds.num_train, ds.num_val, ds.num_test) == (48, 16, 32)
  assert ds.steps_per_epoch(16) == 3 and ds.steps_per_epoch(20) == 2
  batch = next(ds.train_batches(0, 16, seed=0))
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (16, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  batch = next(ds.eval_batches("test", 16))
  assert set(batch) == {"image", "label", "weight"} and batch["weight"].dtype == np.float32


def test_standardisation_uses_train_split_statistics(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16)
  (batch,) = ds.eval_batches("train", ds.num_train)
  np.testing.assert_allclose(batch["image"].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(batch["image"].std(), 1.0, atol=1e-4)
  assert ds.mean.shape == ds.std.shape == (1,)


def test_env_var_lookup(fmnist_dir, monkeypatch):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(fmnist_dir))
  assert load_dataset("fashion_mnist", val_size=0).num_train == N_TRAIN


def test_shuffle_is_deterministic_and_covers_epoch(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16)
  a = epoch_ids(ds, 0, 16, seed=3)
  assert all(np.array_equal(x, y) for x, y in zip(a, epoch_ids(ds, 0, 16, seed=3)))
  assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_ids(ds, 1, 16, seed=3)))
  assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_ids(ds, 0, 16, seed=4)))
  assert sorted(np.concatenate(a)) == sorted(ids(next(ds.eval_batches("train", 48)), ds))


def test_val_split_disjoint_and_deterministic(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16, seed=1)
  train = set(np.concatenate(epoch_ids(ds, 0, 16, seed=0)))
  val = set(ids(next(ds.eval_batches("val", 16)), ds))
  assert len(train) == 48 and len(val) == 16 and not train & val
  assert train | val == set(range(N_TRAIN))
  again = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16, seed=1)
  assert set(ids(next(again.eval_batches("val", 16)), again)) == val
  other = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16, seed=2)
  assert set(ids(next(other.eval_batches("val", 16)), other)) != val


def test_start_step_resume_equals_skipping(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=0)
  full = list(ds.train_batches(2, 16, seed=5))
  resumed = list(ds.train_batches(2, 16, seed=5, start_step=2))
  assert len(full) == 4 and len(resumed) == 2
  for x, y in zip(full[2:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_process_slices_partition_global_batch(fmnist_dir):
  whole = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16)
  parts = [
    load_dataset("fashion_mnist", str(fmnist_dir), val_size=16, process_index=i, process_count=2)
    for i in range(2)
  ]
  for g, p0, p1 in zip(whole.train_batches(1, 16, 7), *(p.train_batches(1, 16, 7) for p in parts)):
    assert p0["image"].shape[0] == p1["image"].shape[0] == 8
    np.testing.assert_array_equal(g["image"][0::2], p0["image"])
    np.testing.assert_array_equal(g["image"][1::2], p1["image"])
  for g, p0, p1 in zip(
    whole.eval_batches("test", 24), *(p.eval_batches("test", 24) for p in parts)
  ):
    for key in ("label", "weight"):
      np.testing.assert_array_equal(g[key][0::2], p0[key])
      np.testing.assert_array_equal(g[key][1::2], p1[key])
  assert parts[1].fixed_batch("test", 10, 0)["image"].shape[0] == 10  # not sliced


def test_eval_padding_weights(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=0)
  batches = list(ds.eval_batches("test", 24))
  assert len(batches) == 2 and all(b["image"].shape[0] == 24 for b in batches)
  np.testing.assert_array_equal(batches[0]["weight"], np.ones(24))
  np.testing.assert_array_equal(batches[1]["weight"], np.r_[np.ones(8), np.zeros(16)])
  real = np.concatenate([ids(b, ds)[b["weight"] > 0] for b in batches])
  np.testing.assert_array_equal(real, np.arange(N_TEST))


def test_fixed_batch_deterministic(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=16)
  a, b = ds.fixed_batch("train", 20, seed=1), ds.fixed_batch("train", 20, seed=1)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["image"].shape == (20, 28, 28, 1) and a["label"].shape == (20,)
  assert len(set(ids(a, ds))) == 20  # a subset: no repeats
  assert not np.array_equal(ids(a, ds), ids(ds.fixed_batch("train", 20, seed=2), ds))
  assert set(ids(ds.fixed_batch("val", 16, 0), ds)) == set(
    ids(next(ds.eval_batches("val", 16)), ds)
  )
  big = ds.fixed_batch("test", 40, seed=0)  # larger than the split: all, some twice
  assert big["image"].shape[0] == 40 and set(ids(big, ds)) == set(range(N_TEST))


# ----------------------------------------------------------------------------
# CIFAR-10 from pickles.
# ----------------------------------------------------------------------------


def test_cifar10_layout_and_values(cifar_dir):
  train, _, test, test_labels = cifar_raw()
  for d in (cifar_dir, cifar_dir / data.CIFAR10_FOLDER):  # parent or the folder itself
    ds = load_dataset("cifar10", str(d), val_size=8)
    assert (ds.image_shape, ds.num_train, ds.num_val, ds.num_test) == ((32, 32, 3), 32, 8, 10)
  (batch,) = ds.eval_batches("test", 10)
  np.testing.assert_allclose(batch["image"] * ds.std + ds.mean, test, atol=1e-3)  # CHW -> HWC
  np.testing.assert_array_equal(batch["label"], test_labels)
  assert ds.mean.shape == (3,)


def test_cifar10_legacy_numpy_pickle(cifar_dir):
  """The official files were pickled by Python 2 / old numpy (numpy.core.multiarray)."""
  path = cifar_dir / data.CIFAR10_FOLDER / "data_batch_1"
  raw = path.read_bytes()
  assert b"numpy._core.multiarray" in raw  # protocol 2: GLOBAL opcode, newline-terminated
  path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
  train = cifar_raw()[0]
  ds = load_dataset("cifar10", str(cifar_dir), val_size=0)
  (batch,) = ds.eval_batches("train", 40)
  np.testing.assert_allclose(batch["image"] * ds.std + ds.mean, train, atol=1e-3)


def _matches_crop_flip(aug_image, candidates, pad=4):
  """True if aug_image is a (zero-padded) crop, maybe flipped, of one of the candidates."""
  padded = np.pad(candidates, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crops = padded[:, dy : dy + 32, dx : dx + 32]
      for c in (crops, crops[:, :, ::-1]):
        if np.any(np.all(np.isclose(c, aug_image, atol=1e-5), axis=(1, 2, 3))):
          return True
  return False


def test_cifar10_augmentation(cifar_dir):
  ds = load_dataset("cifar10", str(cifar_dir), val_size=8)
  a = list(ds.train_batches(0, 16, seed=1))
  b = list(ds.train_batches(0, 16, seed=1))
  assert len(a) == 2 and a[0]["image"].shape == (16, 32, 32, 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  resumed = next(ds.train_batches(0, 16, seed=1, start_step=1))
  np.testing.assert_array_equal(resumed["image"], a[1]["image"])
  (clean,) = ds.eval_batches("train", 32)
  for image in a[0]["image"][:4]:
    assert _matches_crop_flip(image, clean["image"])
  augmented = sum(
    not np.any(np.all(np.isclose(clean["image"], im), axis=(1, 2, 3))) for im in a[0]["image"]
  )
  assert augmented >= 12  # almost every image is shifted or flipped
  np.testing.assert_array_equal(
    ds.fixed_batch("train", 8, 0)["image"], ds.fixed_batch("train", 8, 0)["image"]
  )


def test_crop_flip_offsets():
  images = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32) + 1
  aug = np.array([[0.5, 0.5, 0.9], [0.0, 0.99, 0.1]])  # centre, no flip / corner, flipped
  out = data.crop_flip(images, aug, pad=1)
  np.testing.assert_array_equal(out[0], images[0])
  expected = np.pad(images[1], ((1, 1), (1, 1), (0, 0)))[0:4, 2:6][:, ::-1]
  np.testing.assert_array_equal(out[1], expected)


# ----------------------------------------------------------------------------
# Synthetic.
# ----------------------------------------------------------------------------


def test_synthetic_learnable_and_deterministic():
  ds = load_dataset("synthetic", val_size=200, num_train=1000, num_test=200)
  assert (ds.image_shape, ds.num_classes) == ((28, 28, 1), 10)
  assert (ds.num_train, ds.num_val, ds.num_test) == (1000, 200, 200)
  batch = ds.fixed_batch("train", 1000, seed=0)
  x, y = batch["image"].reshape(1000, -1), batch["label"]
  means = np.stack([x[y == k].mean(0) for k in range(10)])
  dist = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(10, dtype=bool)]
  # Class means differ far more than two halves of the same class do.
  halves = [np.linalg.norm(x[y == k][::2].mean(0) - x[y == k][1::2].mean(0)) for k in range(10)]
  assert dist.min() > max(halves) and dist.mean() > 2 * np.mean(halves)
  # Nearest class mean classifies held-out data well above chance, but not perfectly.
  test = ds.fixed_batch("test", 200, seed=0)
  pred = np.argmin(np.linalg.norm(test["image"].reshape(200, 1, -1) - means, axis=-1), axis=1)
  assert 0.4 < np.mean(pred == test["label"]) < 1.0
  again = load_dataset("synthetic", val_size=200, num_train=1000, num_test=200)
  np.testing.assert_array_equal(again.fixed_batch("train", 1000, seed=0)["image"], batch["image"])
  other = load_dataset("synthetic", val_size=200, num_train=1000, num_test=200, seed=1)
  assert not np.array_equal(other.fixed_batch("train", 50, 0)["image"], batch["image"][:50])


def test_synthetic_custom_shape():
  ds = load_dataset(
    "synthetic", val_size=0, image_shape=(12, 10, 3), num_classes=4, num_train=64, num_test=16
  )
  assert (ds.image_shape, ds.num_classes, ds.num_val) == ((12, 10, 3), 4, 0)
  batch = next(ds.train_batches(0, 32, seed=0))
  assert batch["image"].shape == (32, 12, 10, 3) and batch["label"].max() < 4


# ----------------------------------------------------------------------------
# tensorflow-datasets (mocked, offline) through tfds.data_source.
# ----------------------------------------------------------------------------

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_native_size(tmp_path):
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=40):
    ds = load_dataset("mnist", str(tmp_path), val_size=8)
    assert (ds.image_shape, ds.num_classes) == ((28, 28, 1), 10)
    assert (ds.num_train, ds.num_val, ds.num_test) == (32, 8, 40)
    a = list(ds.train_batches(0, 16, seed=0))
    b = list(ds.train_batches(0, 16, seed=0, start_step=1))
    assert len(a) == 2 and a[0]["image"].shape == (16, 28, 28, 1)
    assert a[0]["image"].dtype == np.float32 and a[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(a[1]["image"], b[0]["image"])
    batches = list(ds.eval_batches("test", 32))
    assert [float(x["weight"].sum()) for x in batches] == [32.0, 8.0]
    assert next(ds.eval_batches("val", 8))["image"].shape == (8, 28, 28, 1)


def test_tfds_resized_imagenet(tmp_path):
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=12):
    ds = load_dataset("imagenet2012", str(tmp_path), val_size=4, image_size=24)
    assert (ds.image_shape, ds.num_classes) == ((24, 24, 3), 1000)
    assert (ds.num_train, ds.num_val, ds.num_test) == (8, 4, 12)
    a = next(ds.train_batches(0, 8, seed=0))
    b = next(ds.train_batches(0, 8, seed=0))
    assert a["image"].shape == (8, 24, 24, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
    c = next(ds.train_batches(1, 8, seed=0))
    assert not np.array_equal(a["image"], c["image"])
    e = next(ds.eval_batches("test", 8))
    assert e["image"].shape == (8, 24, 24, 3) and np.all(np.isfinite(e["image"]))
    np.testing.assert_allclose(ds.mean, np.array(data.IMAGENET_MEAN), rtol=1e-6)


def test_random_resized_crop_box_in_bounds():
  rng = np.random.default_rng(0)
  for h, w in [(10, 25), (300, 200), (5, 5), (1, 40)]:
    for _ in range(50):
      top, left, ch, cw = data.random_resized_crop_box(h, w, rng.random(41))
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0


def test_tfds_not_prepared_never_downloads(tmp_path):
  with pytest.raises(DataError, match="tfds build mnist") as e:
    load_dataset("mnist", str(tmp_path / "tfds"))
  assert "array_record" in str(e.value) and "--data_dir" in str(e.value)
  with pytest.raises(DataError, match="downloads/manual"):
    load_dataset("imagenet2012", str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds" / "downloads").exists()


def test_unknown_dataset_name():
  with pytest.raises(DataError, match="fashion_mnist") as e:
    load_dataset("no_such_dataset_xyz")
  assert "synthetic" in str(e.value) and "cifar10" in str(e.value)
  with pytest.raises(DataError, match="network"):
    load_dataset("huggingface:mnist")


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_check_batch_size():
  data.check_batch_size(16, 8)
  for gbs in (12, 0, -8):
    with pytest.raises(DataError, match="multiple of the number of devices"):
      data.check_batch_size(gbs, 8)


def test_missing_fashion_mnist(tmp_path, fmnist_dir):
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
    load_dataset("fashion_mnist", str(tmp_path / "nowhere"))
  assert "does not exist" in str(e.value) and "--data_dir" in str(e.value)
  assert data.DATA_DIR_ENV in str(e.value)
  os.remove(fmnist_dir / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz"):
    load_dataset("fashion_mnist", str(fmnist_dir))


def test_explicit_data_dir_never_falls_back(tmp_path, fmnist_dir, cifar_dir, monkeypatch):
  """A named folder is used or the load fails, even when $ARSP_DATA_DIR has the files."""
  empty = tmp_path / "empty"
  empty.mkdir()
  a_file = tmp_path / "a_file"
  a_file.write_bytes(b"x")
  for name, good in (("fashion_mnist", fmnist_dir), ("cifar10", cifar_dir)):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(good))
    assert load_dataset(name, val_size=0).num_test > 0
    with pytest.raises(DataError, match="used as given") as e:
      load_dataset(name, str(empty), val_size=0)
    assert str(empty) in str(e.value) and "missing" in str(e.value)
    with pytest.raises(DataError, match="not a folder"):
      load_dataset(name, str(a_file), val_size=0)


@pytest.mark.parametrize("problem", ["magic", "size", "truncated", "count", "label_range"])
def test_corrupt_fashion_mnist(fmnist_dir, problem):
  names = data.FASHION_MNIST_FILES
  images = fake_images(N_TRAIN, (28, 28), 0)
  if problem == "magic":
    write_idx(fmnist_dir / names["train_images"], images, magic=2049, dims=(N_TRAIN, 28, 28))
    match = "magic number"
  elif problem == "size":
    write_idx(fmnist_dir / names["train_images"], images[:-1], dims=(N_TRAIN, 28, 28))
    match = "bytes of data follow"
  elif problem == "truncated":
    path = fmnist_dir / names["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    match = "cannot decompress"
  elif problem == "count":
    write_idx(fmnist_dir / names["train_labels"], np.arange(N_TRAIN - 1) % 10)
    match = "labels"
  else:
    write_idx(fmnist_dir / names["train_labels"], np.full(N_TRAIN, 12))
    match = "out of range"
  with pytest.raises(DataError, match=match) as e:
    load_dataset("fashion_mnist", str(fmnist_dir))
  assert "dataset-fashion-mnist" in str(e.value) or "Replace" in str(e.value)


def test_missing_cifar10(tmp_path, cifar_dir):
  with pytest.raises(DataError, match="cifar-10-batches-py") as e:
    load_dataset("cifar10")
  assert "--data_dir" in str(e.value)
  os.remove(cifar_dir / data.CIFAR10_FOLDER / "test_batch")
  with pytest.raises(DataError, match="missing test_batch") as e:
    load_dataset("cifar10", str(cifar_dir))
  assert "tar xzf" in str(e.value)


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
  "content",
  [
    b"not a pickle",
    pickle.dumps(_Evil()),
    pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}),
  ],
)
def test_corrupt_cifar10(cifar_dir, content):
  (cifar_dir / data.CIFAR10_FOLDER / "data_batch_3").write_bytes(content)
  with pytest.raises(DataError, match="not a valid CIFAR-10 batch") as e:
    load_dataset("cifar10", str(cifar_dir))
  assert "data_batch_3" in str(e.value) and "extraction" in str(e.value)


def test_val_size_errors(fmnist_dir):
  with pytest.raises(DataError, match="--val_size"):
    load_dataset("fashion_mnist", str(fmnist_dir), val_size=N_TRAIN)
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=0)
  assert ds.num_val == 0
  with pytest.raises(DataError, match="--val_size"):
    ds.eval_batches("val", 8)
  with pytest.raises(DataError, match="--val_size"):
    ds.fixed_batch("val", 8, 0)


def test_batch_size_errors(fmnist_dir):
  ds = load_dataset("fashion_mnist", str(fmnist_dir), val_size=0, process_index=1, process_count=2)
  with pytest.raises(DataError, match="multiple of the number of processes"):
    ds.train_batches(0, 15, seed=0)  # raised at call time, not on first next()
  with pytest.raises(DataError, match="multiple of the number of processes"):
    ds.eval_batches("test", 15)
  with pytest.raises(DataError, match="larger than the training split"):
    ds.steps_per_epoch(128)


def test_unknown_option(fmnist_dir):
  with pytest.raises(DataError, match="does not take the option"):
    load_dataset("fashion_mnist", str(fmnist_dir), image_size=32)
  assert (
    load_dataset("fashion_mnist", str(fmnist_dir), val_size=0, image_size=None).num_test == N_TEST
  )


# ----------------------------------------------------------------------------
# The real Debian files, when installed.
# ----------------------------------------------------------------------------


REAL_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
  not all(os.path.isfile(os.path.join(REAL_DIR, f)) for f in data.FASHION_MNIST_FILES.values()),
  reason="apt-get install dataset-fashion-mnist to run this test",
)
def test_real_debian_fashion_mnist():
  ds = load_dataset("fashion_mnist", REAL_DIR, val_size=0)
  assert (ds.num_train, ds.num_val, ds.num_test, ds.image_shape) == (60000, 0, 10000, (28, 28, 1))
  ds = load_dataset("fashion_mnist", REAL_DIR)  # cached decode, default val_size
  assert (ds.num_train, ds.num_val) == (55000, 5000)
  batch = next(ds.eval_batches("test", 1000))
  assert abs(batch["image"].mean()) < 0.1 and 0.9 < batch["image"].std() < 1.1
  assert np.array_equal(np.bincount(batch["label"], minlength=10) > 0, np.ones(10, bool))


# grain: tfds training batches decoded in worker processes, identical to the in-process ones.


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return prepare_tiny_tfds(data_dir), data_dir


def test_grain_workers_give_the_in_process_batches(tiny_tfds):
  """1 worker process from a later step, and 2 worker processes for each slice of 2 processes:
  the same batches as grain in this process (workers = 0)."""
  name, data_dir = tiny_tfds

  def batches(workers, start=0, index=0, count=1):
    ds = load_dataset(name, data_dir, val_size=8, seed=0, image_size=12, input_workers=workers,
                      process_index=index, process_count=count)  # fmt: skip
    return list(ds.train_batches(1, 8, 3, start_step=start))

  ref = batches(0)
  assert len(ref) == 5 and ref[0]["image"].shape == (8, 12, 12, 3)
  assert not np.array_equal(ref[0]["image"], ref[1]["image"])
  got = batches(1, 2)  # from a later step
  assert len(got) == len(ref) - 2
  for a, b in zip(got, ref[2:]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for index in range(2):  # each process's half of every global batch, through 2 workers
    got = batches(2, 0, index, 2)
    for a, b in zip(got, ref):
      np.testing.assert_array_equal(a["image"], b["image"][index::2])
