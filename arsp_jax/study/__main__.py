"""``python -m arsp_jax.study``: the comparison harness."""

import sys

from arsp_jax.study.harness import main

if __name__ == "__main__":
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  sys.exit(main())
