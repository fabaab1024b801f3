"""Fashion-MNIST on a deeper MLP where allocation matters: 784-1024-1024-64-1024-10.

Four prunable binary layers of clearly different sizes and roles: fc1 (803k connections, the
input layer), fc2 (1.05M), a 64-wide bottleneck fc3 (65k) and its expansion fc4 (65k). A
two-layer MLP is a one-dimensional allocation problem; this one is not.

python train.py --config=arsp_jax/configs/fashion_mnist_deep.py
"""

from arsp_jax.configs import fashion_mnist

HIDDEN = (1024, 1024, 64, 1024)


def get_config():
  c = fashion_mnist.get_config()
  c.model_kwargs.hidden = HIDDEN
  return c
