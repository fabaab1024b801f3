"""ImageNet (a prepared tensorflow-datasets copy): Bi-Real ResNet-18, channel pruning.

Also the preset of any other tensorflow-datasets name (``--dataset=<name>`` keeps these
settings and reads ``<name>``).
"""

import ml_collections

from arsp_jax.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "imagenet2012"
  c.model = "resnet18"
  c.eval_batch_size = 256
  c.val_size = 10000
  c.epochs = 90
  c.arsp.epochs = 10
  c.arsp.prune_every = 500
  c.arsp.calib_size = 2048
  c.arsp.reward_size = 4096
  c.arsp.granularity = "channel"
  c.arsp.channel_multiple = 8
  # Memory of the round at 224x224 (bench/memory.py, one device, XLA's memory_analysis):
  # candidates 4 at a time, forward passes of 256 images (16 at once over whole sets: 533 GiB).
  c.arsp.eval_chunk = 4
  c.arsp.eval_batch = 256
  c.finetune.epochs = 10
  c.dataset_kwargs = ml_collections.ConfigDict({"image_size": 224})
  return c
