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
  c.finetune.epochs = 10
  c.dataset_kwargs = ml_collections.ConfigDict({"image_size": 224})
  return c
