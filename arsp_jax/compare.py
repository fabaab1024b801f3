"""``python -m arsp_jax.compare``: alias of ``python -m arsp_jax.study`` (kept for old commands)."""

from arsp_jax.study.__main__ import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
  run()
