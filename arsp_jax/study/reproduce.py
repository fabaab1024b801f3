"""Does today's training code reproduce a study's finished run? Re-run it and compare.

A study whose runs span several versions of the training code (``provenance.training_code``)
compares runs across them only if the changes between them do not alter training. This re-runs
one finished run of ``STUDY_DIR/runs/`` with the code as it is now (its own ``config.json``,
from the same dense start), into a scratch directory, and compares the test accuracy, the masks
and the latent weights of the final checkpoints. The record is appended to
``STUDY_DIR/reproduced.json``; the study's report lists it beside the code versions::

  python -m arsp_jax.study.reproduce --study=results/frontier_deep --run=gmp_sp0.98_s0

Exit status 0 when the run is reproduced bit for bit, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile

import jax
import numpy as np

from arsp_jax.study import provenance

FILE = "reproduced.json"


def _leaves(tree) -> list:
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def compare(run_dir: str, scratch: str) -> dict:
  """Re-run ``run_dir``'s configuration into ``scratch``; what differs."""
  from arsp_jax.train import evaluate, loop  # noqa: PLC0415 (jax backends start here)

  cfg = evaluate.saved_config(os.path.join(run_dir, "config.json"))
  res = loop.run(cfg, scratch, progress=False, log=lambda msg: None)
  with open(os.path.join(run_dir, "results.json")) as f:
    old = json.load(f)
  _, a, _ = evaluate.load_run(run_dir)
  _, b, _ = evaluate.load_run(scratch)
  masks_equal = all(np.array_equal(x, y) for x, y in zip(_leaves(a.masks), _leaves(b.masks)))
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(_leaves(a.params), _leaves(b.params)))
  return {
    "test_accuracy_then": old["test_accuracy"],
    "test_accuracy_now": res["test_accuracy"],
    "masks_identical": masks_equal,
    "params_max_abs_diff": diff,
    "identical": masks_equal and diff == 0.0 and old["test_accuracy"] == res["test_accuracy"],
  }


def record(study: str, run: str) -> dict:
  with open(os.path.join(study, "runs.csv")) as f:
    row = next((r for r in csv.DictReader(f) if r["run"] == run and r["status"] == "done"), None)
  if row is None:
    sys.exit(f"{study}/runs.csv has no finished run {run!r}")
  now = {
    "training_code_now": provenance.training_code(),
    "code_version_now": provenance.code_version(),
  }
  if now["training_code_now"].endswith("+dirty"):
    sys.exit(
      "the training code has uncommitted changes: commit them first (the record names the commit)"
    )
  with tempfile.TemporaryDirectory(prefix="reproduce_") as scratch:
    out = compare(os.path.join(study, "runs", run), os.path.join(scratch, run))
  out = {
    "run": run,
    "method": row["method"],
    "training_code_then": row["training_code"],
    **now,
    **out,
  }
  path = os.path.join(study, FILE)
  records = load(study)
  records.append(out)
  with open(path + ".tmp", "w") as f:
    json.dump(records, f, indent=1)
  os.replace(path + ".tmp", path)
  return out


def load(study: str) -> list[dict]:
  path = os.path.join(study, FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)


def report_lines(study: str) -> list[str]:
  """The study report's sentence on its reproductions ('' when there are none)."""
  recs = load(study)
  if not recs:
    return []
  parts = [
    f"`{r['run']}` (training code `{r['training_code_then']}` → `{r['training_code_now']}`): "
    + (
      "bit for bit"
      if r["identical"]
      else f"**differs** (test accuracy {r['test_accuracy_then']:.4f} → {r['test_accuracy_now']:.4f}, "
      f"masks {'equal' if r['masks_identical'] else 'differ'}, weights up to "
      f"{r['params_max_abs_diff']:.2g} apart)"
    )  # fmt: skip
    for r in recs
  ]
  return [
    "Finished runs re-run with a later training code (`python -m arsp_jax.study.reproduce`): "
    + "; ".join(parts)
    + "."
  ]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--study", required=True, help="the study's directory (holds runs.csv)")
  ap.add_argument("--run", required=True, help="a finished run's name, e.g. gmp_sp0.98_s0")
  args = ap.parse_args(argv)
  out = record(args.study, args.run)
  print(json.dumps(out, indent=1))
  return 0 if out["identical"] else 1


if __name__ == "__main__":
  sys.exit(main())
