"""CIFAR-10 (the cifar-10-batches-py pickles, or a tfds copy): the small binary VGG."""

from arsp_jax.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "cifar10"
  c.model = "vgg_small"
  c.batch_size = 128
  c.epochs = 100
  c.arsp.epochs = 20
  c.arsp.prune_every = 100
  c.finetune.epochs = 20
  return c
