"""The exceptions a user can cause, in one place.

Every entry point (``train.py``, ``eval.py``, ``python -m arsp_jax.study``) runs inside one
error boundary (``cli.user_errors``): these print as one paragraph on stderr and exit with
status 2 (the message always says what to change); any other exception is a bug, reported in
one line naming the file that holds its traceback, with exit status 1.
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
