"""The JPEG dataset of ``bench/input_pipeline.py``, read back through the training input path."""

import hashlib
import io
import os
import sys

import numpy as np

from arsp_jax.data import load_dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import input_pipeline  # noqa: E402


def test_benchmark_jpegs_are_read_back_by_the_tfds_source(tmp_path):
  """The JPEG bytes the benchmark writes (tfds Image features, no TensorFlow) come back from
  ``tfds.data_source`` as the pixels PIL decodes from them, with their labels, and the grain
  training path turns them into standardised random-resized crops."""
  from PIL import Image

  w, h, n = 40, 30, 12
  name = input_pipeline.prepare_jpeg_tfds(str(tmp_path), n, 4, width=w, height=h, seed=3)

  def key(image, label):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(), int(label)

  expected = sorted(
    key(np.asarray(Image.open(io.BytesIO(jpeg))), label)
    for jpeg, label in input_pipeline.jpeg_examples(n, w, h, 90, 3)
  )
  ds = load_dataset(name, str(tmp_path), val_size=0, seed=0, image_size=16, input_workers=0)
  train = ds._source.sources["train"]  # tfds' own reader (the records are stored shuffled)
  got = sorted(key(train[i]["image"], train[i]["label"]) for i in range(len(train)))
  assert got == expected
  assert train[0]["image"].shape == (h, w, 3) and train[0]["image"].dtype == np.uint8
  assert (ds.num_train, ds.num_test, ds.num_classes) == (n, 4, input_pipeline.NUM_CLASSES)
  batches = list(ds.train_batches(0, 4, 0))
  assert len(batches) == n // 4
  image = batches[0]["image"]
  assert image.shape == (4, 16, 16, 3) and image.dtype == np.float32
  assert abs(float(image.mean())) < 1.5 and 0.1 < float(image.std()) < 3.0
