"""Where a study's runs came from: the code version that trained each one, and a fingerprint of
the dense start each pruning run began from.

Every run records ``code_version`` (the git commit of the package, ``+dirty`` when files under
``arsp_jax/`` differ from it) and ``training_code`` (a hash of the package's tree without the
study harness and the exporter, which do not change training) in its ``harness.json``; the
report flags a study whose runs span several training-code versions. Every run of a seed must start from the same dense run (that is what
makes the comparisons paired): ``dense_fingerprint`` hashes the dense run's results (its loss
history and accuracies to full precision), so a dense start retrained elsewhere, on another
machine whose floating point differs, is told apart from the original.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNKNOWN = "unknown"


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(
      ["git", "-C", PACKAGE_DIR, *args], capture_output=True, text=True, timeout=10, check=True
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """``<12-hex commit>`` or ``<commit>+dirty`` (tracked files under arsp_jax/ changed), or
  ``unknown`` outside a git checkout."""
  commit = _git("rev-parse", "--short=12", "HEAD")
  if not commit:
    return UNKNOWN
  changed = _git("status", "--porcelain", "--untracked-files=no", "--", PACKAGE_DIR)
  return commit + ("+dirty" if changed else "")


# The parts of the package that do not change how a run trains.
NOT_TRAINING = ("study", "export")


@functools.lru_cache(maxsize=1)
def training_code() -> str:
  """A 12-hex hash of the committed tree of ``arsp_jax/`` without ``study/`` and ``export/``
  (``+dirty`` when those files differ from the commit); ``unknown`` outside git."""
  tree = _git("ls-tree", "HEAD", "--", ".")
  if tree is None:
    return UNKNOWN
  digest = hashlib.sha256("\n".join(training_entries(tree)).encode()).hexdigest()[:12]
  excl = [f":(exclude){os.path.join(PACKAGE_DIR, n)}" for n in NOT_TRAINING]
  changed = _git("status", "--porcelain", "--untracked-files=no", "--", PACKAGE_DIR, *excl)
  return digest + ("+dirty" if changed else "")


def training_entries(tree: str) -> list[str]:
  """The lines of ``git ls-tree`` output (``mode type sha<TAB>name``) but those of the parts
  that do not change training (``NOT_TRAINING``). Until 2026-12-07 the name was split on ``/``
  instead of the tab, so study/ and export/ were hashed too: runs recorded before then carry a
  hash that changed with every commit to them."""
  return [ln for ln in tree.splitlines() if ln.split("\t")[-1] not in NOT_TRAINING]


def dense_fingerprint(run_dir: str) -> str:
  """A 16-hex hash of a finished dense run's results (history and accuracies); '' if none."""
  path = os.path.join(run_dir, "results.json")
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    res = json.load(f)
  keys = ("history", "dense_test_accuracy", "test_accuracy", "val_accuracy", "test_loss")
  blob = json.dumps({k: res.get(k) for k in keys}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]
