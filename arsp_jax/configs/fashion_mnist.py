"""Fashion-MNIST (the default run): the 784-1024-1024-10 BinaryConnect MLP.

python train.py --config=arsp_jax/configs/fashion_mnist.py --config.arsp.population=8
"""

from arsp_jax.configs import base


def get_config():
  c = base.get_config()
  c.dataset = "fashion_mnist"
  c.model = "mlp"
  return c
