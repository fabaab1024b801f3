"""Procedurally generated 28x28 images: a short run that needs no data files."""

import ml_collections

from arsp_jax.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "synthetic"
  c.model = "mlp"
  c.val_size = 1000
  c.dataset_kwargs = ml_collections.ConfigDict(
    {"image_shape": (28, 28, 1), "num_classes": 10, "num_train": 6000, "num_test": 1000}
  )
  c.model_kwargs = ml_collections.ConfigDict({"hidden": (256, 256)})
  c.epochs = 3
  c.arsp.epochs = 2
  c.finetune.epochs = 2
  c.arsp.calib_size = 500
  c.arsp.reward_size = 1000
  c.arsp.prune_every = 10
  return c
