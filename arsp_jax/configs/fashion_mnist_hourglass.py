"""Fashion-MNIST on an eight-layer hourglass MLP, where a layer-wise allocation has room to matter.

784-1024-512-256-64-256-512-1024-256-10: eight prunable binary layers of six sizes and three
roles — the input layer fc1 (803k connections), a contracting path fc2-fc4 (524k, 131k, 16k)
into a 64-wide bottleneck, an expanding path fc5-fc7 (16k, 131k, 524k) and a last hidden layer
fc8 (262k) before the full-precision classifier. 2.41M prunable connections in all, trained on
the 2-core CPU at about the default MLP's cost per step.

python train.py --config=arsp_jax/configs/fashion_mnist_hourglass.py
"""

from arsp_jax.configs import fashion_mnist

HIDDEN = (1024, 512, 256, 64, 256, 512, 1024, 256)


def get_config():
  c = fashion_mnist.get_config()
  c.model_kwargs.hidden = HIDDEN
  return c
