"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer puts its bytes in a temporary file in the target's directory, flushes it to disk
and renames it over the target (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a temporary path beside ``path``; on success renames it over ``path``.

  The caller writes the temporary file (by name, e.g. ``fig.savefig(tmp)``); on an exception
  the temporary file is removed and ``path`` is left as it was. ``suffix`` keeps the file
  type for writers that read it from the name (matplotlib).
  """
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically (numpy scalars and
  arrays, and tuples, become JSON numbers and lists)."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_to_json))


def _to_json(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, tuple):
    return list(o)
  raise TypeError(f"not JSON serialisable: {type(o)}")
