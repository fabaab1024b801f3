"""Deployment: bit packing and mask coding, size accounting, the packed inference engine."""

# the one-line error of the compiled engine (engine.load, compiled.py) when numba is missing
NEEDS_NUMBA = (
  "the compiled engine needs numba: pip install 'arsp_jax[engine]' (or pass engine='numpy')"
)
