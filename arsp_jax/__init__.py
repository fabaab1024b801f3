"""arsp_jax: binary neural networks pruned with Adaptive Reservoir Sampling Pruning."""

__version__ = "0.1.0"
