"""The exceptions a user can cause, in one place.

Every entry point (``train.py``, ``eval.py``, ``python -m arsp_jax.study``, the benchmarks)
prints these as one paragraph on stderr and exits with status 2 (``cli.user_errors``); the
message always says what to change.
"""


class ConfigError(ValueError):
  """A user-facing configuration problem."""


class DataError(ValueError):
  """User-facing data problem; the message says exactly how to fix it."""


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used (missing, incompatible, corrupt)."""


class CheckpointMismatch(CheckpointError):
  """A readable checkpoint written by another model / configuration / input shape."""


class TrainingError(RuntimeError):
  """A run that cannot continue (non-finite loss, ...); the message names the fix."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was saved and the run stopped (exit status 143)."""


class ExportError(ValueError):
  """A model or file that cannot be exported / loaded (the message names the problem)."""
