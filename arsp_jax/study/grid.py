"""The study's grid: planning the runs, their configurations, claiming them, running them,
and collecting one row per finished run.

Runs live in ``<workdir>/runs/<name>/`` (each a ``train.py`` workdir: rerunning resumes it).
Finished runs are skipped. Several harness processes may work on the same study at once
(e.g. one per GPU, or to fill a big machine): a run is claimed by atomically creating
``runs/<name>.lock``; a lock whose process is gone is taken over, and the run resumes from
its checkpoints.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from arsp_jax import configs as config_lib
from arsp_jax import fileio
from arsp_jax.errors import CheckpointError, ConfigError, DataError, TrainingError
from arsp_jax.export import summary
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.study import provenance
from arsp_jax.train import loop

REFERENCE = "arsp"
# A run that stops with one of these is recorded as failed and not retried.
RUN_ERRORS = (TrainingError, ConfigError, DataError, CheckpointError)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str  # directory under <workdir>/runs
  label: str  # method as reported (e.g. "arsp", "arsp:taylor", "control")
  method: str  # --method
  score: str | None  # --score override
  target: float  # target sparsity (0 for dense/control)
  seed: int
  depends: str | None  # the dense run this one starts from
  overrides: tuple = ()  # ((config key, value text), ...) of a variant: arsp@arsp.population=32


def parse_label(label: str) -> tuple[str, str | None, list[tuple[str, str]]]:
  """``method[:score][@key=value...]`` -> (method, score, overrides); ValueError if bad."""
  head, *variant = label.split("@")
  method, _, score = head.partition(":")
  if methods_lib.get(method) is None or method == "control":
    raise ValueError(
      f"--methods: {label!r} is not a pruning method; choose from "
      f"{', '.join(m for m in methods_lib.REGISTRY if m != 'control')} "
      f"(optionally with a score, arsp:taylor, and config overrides, "
      f"arsp@arsp.population=32)."
    )
  overrides = []
  for item in variant:
    key, eq, value = item.partition("=")
    if not eq or not key:
      raise ValueError(f"--methods: {label!r}: a variant is method@key=value.")
    overrides.append((key, value))
  return method, score or None, overrides


def plan_grid(
  methods: Sequence[str], sparsities: Sequence[float], seeds: Sequence[int], control: bool = True
) -> list[RunSpec]:
  """The runs of a study, in execution order: dense starts, controls, then the pruning runs
  sparsity-major (the sparsities listed first finish first)."""
  specs = [RunSpec(f"dense_s{s}", "dense", "dense", None, 0.0, s, None) for s in seeds]
  if control:
    specs += [
      RunSpec(f"control_s{s}", "control", "control", None, 0.0, s, f"dense_s{s}") for s in seeds
    ]
  for sp in sparsities:
    for label in methods:
      method, score, overrides = parse_label(label)
      tag = re.sub(r"[^A-Za-z0-9_.+-]", "-", label.replace("@", "+"))
      for s in seeds:
        specs.append(
          RunSpec(
            f"{tag}_sp{sp:g}_s{s}",
            label,
            method,
            score,
            float(sp),
            s,
            f"dense_s{s}",
            tuple(overrides),
          )
        )
  return specs


def run_config(base, spec: RunSpec, runs_dir: str):
  """The train.py configuration of one run of the study."""
  over: dict[str, Any] = {"method": spec.method, "seed": spec.seed}
  if spec.depends:
    over["init_from"] = os.path.join(runs_dir, spec.depends)
  if spec.method not in ("dense", "control"):
    over["arsp.target_sparsity"] = spec.target
  if spec.score:
    over["arsp.score"] = spec.score
  for key, value in spec.overrides:
    over[key] = config_lib.parse_value(value)
  return config_lib.apply_overrides(base, over)


# ----------------------------------------------------------------------------------------------
# Claiming runs (several harness processes on one study)
# ----------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _lock_owner(lock_path: str) -> dict | None:
  """The lock's owner record; None while it is being written (young and unreadable)."""
  try:
    with open(lock_path) as f:
      return json.load(f)
  except (OSError, ValueError):
    try:
      if time.time() - os.path.getmtime(lock_path) < 60:
        return None
    except OSError:
      return {}  # gone meanwhile: try again
    return {}  # empty after a crash, and old: stale


def claim(lock_path: str) -> bool:
  """Atomically creates ``lock_path`` (O_EXCL); takes over a lock whose process is gone."""
  for _ in range(2):
    try:
      fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      owner = _lock_owner(lock_path)
      if owner is None:
        return False
      host = socket.gethostname()
      if owner.get("host") == host and _alive(int(owner.get("pid", -1))):
        return False
      if owner.get("host") not in (None, host):
        return False  # another machine's lock: never steal it
      try:
        os.unlink(lock_path)  # stale: its process is gone; only one unlink+O_EXCL wins
      except FileNotFoundError:
        pass
      continue
    with os.fdopen(fd, "w") as f:
      json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
    return True
  return False


def release(lock_path: str) -> None:
  try:
    os.unlink(lock_path)
  except FileNotFoundError:
    pass


def run_state(runs_dir: str, name: str) -> str:
  """``done`` (results.json written), ``failed`` (failed.json written) or ``todo``."""
  d = os.path.join(runs_dir, name)
  if os.path.exists(os.path.join(d, "results.json")):
    return "done"
  if os.path.exists(os.path.join(d, "failed.json")):
    return "failed"
  return "todo"


# ----------------------------------------------------------------------------------------------
# Running the grid
# ----------------------------------------------------------------------------------------------


def run_one(base, spec: RunSpec, runs_dir: str, log: Callable[[str], None]) -> bool:
  """Trains one claimed run; True when it finished, False when it failed (recorded in
  ``<run>/failed.json``)."""
  run_dir = os.path.join(runs_dir, spec.name)
  cfg = run_config(base, spec, runs_dir)
  log(f"[{spec.name}] start ({spec.label}, target sparsity {spec.target:g}, seed {spec.seed})")
  t0 = time.time()
  try:
    res = loop.run(cfg, run_dir, progress=False, log=lambda msg, n=spec.name: log(f"[{n}] {msg}"))
  except RUN_ERRORS as e:
    fileio.write_json_atomic(
      os.path.join(run_dir, "failed.json"), {"error": str(e), "type": type(e).__name__}
    )
    log(f"[{spec.name}] FAILED: {e}")
    return False
  wall = time.time() - t0
  start = os.path.join(runs_dir, spec.depends) if spec.depends else run_dir
  fileio.write_json_atomic(
    os.path.join(run_dir, "harness.json"),
    {
      "wall_seconds": wall,
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "code_version": provenance.code_version(),
      "training_code": provenance.training_code(),
      "dense_fingerprint": provenance.dense_fingerprint(start),
      **_recorded_fingerprint(run_dir),
    },
  )
  log(
    f"[{spec.name}] done in {wall:.0f} s: test accuracy "
    f"{100 * res['test_accuracy']:.2f}%, sparsity {res['sparsity']:.4f}"
  )
  return True


def _recorded_fingerprint(run_dir: str) -> dict:
  """For a dense start trained again (``revive_dense_starts``): the recorded fingerprint and
  whether the new run reproduced it."""
  old = _read_json(os.path.join(run_dir, "harness.recorded.json"))
  if not old:
    return {}
  now = provenance.dense_fingerprint(run_dir)
  rec = old.get("dense_fingerprint", "")
  return {"recorded_fingerprint": rec, "reproduced": bool(rec) and rec == now}


def _claim_and_run(base, spec, runs_dir, log) -> str | None:
  """'ran' / 'failed' when this process ran ``spec``; None when it could not take it."""
  if run_state(runs_dir, spec.name) != "todo":
    return None
  if spec.depends and run_state(runs_dir, spec.depends) != "done":
    return None  # its dense start is not finished (another process has it, or it failed)
  lock = os.path.join(runs_dir, spec.name + ".lock")
  if not claim(lock):
    return None
  try:
    if run_state(runs_dir, spec.name) != "todo":  # finished while we looked
      return None
    return "ran" if run_one(base, spec, runs_dir, log) else "failed"
  finally:
    release(lock)


def revive_dense_starts(specs: Sequence[RunSpec], runs_dir: str, log=print) -> list[str]:
  """Dense starts that finished elsewhere (their results.json is committed, their checkpoints
  are not) but still have runs to start: their records are set aside (``*.recorded.json``) so
  that they are trained again here, from the same seed. The new run's fingerprint is compared
  with the recorded one; the report flags a seed whose runs did not start from the same dense
  weights (another machine's floating point can differ)."""
  revived = []
  for spec in specs:
    d = os.path.join(runs_dir, spec.name)
    if spec.method != "dense" or run_state(runs_dir, spec.name) != "done":
      continue
    if os.path.isdir(os.path.join(d, "checkpoints")):
      continue
    if not any(s.depends == spec.name and run_state(runs_dir, s.name) == "todo" for s in specs):
      continue
    for name in ("results.json", "harness.json"):
      if os.path.exists(os.path.join(d, name)):
        os.replace(os.path.join(d, name), os.path.join(d, name.replace(".json", ".recorded.json")))
    log(f"[{spec.name}] its checkpoints are not here: training it again from seed {spec.seed}")
    revived.append(spec.name)
  return revived


def run_grid(
  base,
  specs: Sequence[RunSpec],
  workdir: str,
  *,
  log: Callable[[str], None] = print,
  poll_seconds: float = 5.0,
  max_runs: int | None = None,
  replan: Callable[[], Sequence[RunSpec]] | None = None,
) -> dict:
  """Runs every unfinished run this process can claim; waits for runs held by others.
  ``replan``: the runs in their order again, after every finished run (an order that depends on
  the results so far, e.g. a protocol's headroom decision).

  Returns counts {"ran", "skipped", "failed"}. A run that stops with a user-facing error
  (non-finite loss, bad config, data) is recorded in ``<run>/failed.json`` and not retried
  (delete that file to retry).
  """
  runs_dir = os.path.join(os.path.abspath(workdir), "runs")
  os.makedirs(runs_dir, exist_ok=True)
  revive_dense_starts(specs, runs_dir, log)
  counts = {"ran": 0, "skipped": sum(run_state(runs_dir, s.name) != "todo" for s in specs)}
  counts["failed"] = 0
  limit = float("inf") if max_runs is None else max_runs
  while counts["ran"] < limit:
    progressed = False
    for spec in specs:
      if counts["ran"] >= limit:
        break
      outcome = _claim_and_run(base, spec, runs_dir, log)
      if outcome:
        counts[outcome] += 1
        progressed = progressed or outcome == "ran"
      if outcome == "ran" and replan is not None:
        specs = list(replan())
        break
    blocked = [s for s in specs if run_state(runs_dir, s.name) == "todo"]
    if not blocked:
      return counts
    if not progressed:
      # Everything left is held by another process, or waits for a dense start that failed.
      deps_failed = [s for s in blocked if s.depends and run_state(runs_dir, s.depends) == "failed"]
      if len(deps_failed) == len(blocked):
        for s in deps_failed:
          log(f"[{s.name}] skipped: its dense start {s.depends} failed")
        return counts
      time.sleep(poll_seconds)
  return counts


# ----------------------------------------------------------------------------------------------
# Collecting the runs
# ----------------------------------------------------------------------------------------------


def bits_per_weight(results: dict) -> float:
  """Stored bits per prunable connection of the binary layers (signs + mask as the exporter
  encodes them; for results written before it existed, the entropy bound ``H(d) + d``)."""
  size = results.get("size", {})
  if "binary_bits_per_weight" in size:  # the exporter's real encoding (compress.py)
    return float(size["binary_bits_per_weight"])
  n = size.get("prunable_connections") or results.get("params") or 0
  if not n:
    return float("nan")
  d = 1.0 - float(results["sparsity"])
  if d >= 1.0:
    return 1.0
  return d + summary.binary_entropy(d)


def _read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _search_columns(res: dict) -> dict:
  """For controllers that score candidates (the agent, random search): the best and the mean
  candidate reward per round, averaged over the rounds at the final budget (the same density,
  so the same evaluations compared round after round); empty for the others."""
  rounds = (res.get("history") or {}).get("rounds") or []
  scored = [r for r in rounds if "candidate_reward_max" in (r.get("controller") or {})]
  if not scored:
    return {}
  final = scored[-1]["density_after"]
  at = [r for r in scored if abs(r["density_before"] - final) < 1e-4]
  at = at or scored[-1:]
  return {
    "final_rounds": len(at),
    "final_best_reward": float(np.mean([r["controller"]["candidate_reward_max"] for r in at])),
    "final_mean_reward": float(np.mean([r["controller"]["candidate_reward_mean"] for r in at])),
  }


def _finished_row(d: str) -> dict:
  res = _read_json(os.path.join(d, "results.json"))
  harness = _read_json(os.path.join(d, "harness.json"), {})
  row: dict[str, Any] = {
    "sparsity": res["sparsity"],
    "dense_test_accuracy": res.get("dense_test_accuracy"),
    "test_accuracy": res["test_accuracy"],
    "val_accuracy": res.get("val_accuracy"),
    "bits_per_weight": bits_per_weight(res),
    "hyperscore": res.get("hyperscore"),
    "train_seconds": res.get("train_seconds"),
    "wall_seconds": harness.get("wall_seconds", float("nan")),
    "score": res.get("score", ""),
    "controller": res.get("controller", ""),
    "code_version": harness.get("code_version", ""),
    "training_code": harness.get("training_code", ""),
    "dense_fingerprint": harness.get("dense_fingerprint", ""),
  }
  row.update(_search_columns(res))
  kr = res.get("keep_ratios")
  if kr and kr.get("per_round"):
    for layer, r in zip(kr["layers"], kr["per_round"][-1]):
      row[f"keep_{layer}"] = r
    row["_rounds"] = kr["per_round"]
    row["_layers"] = kr["layers"]
  return row


def collect(workdir: str, specs: Sequence[RunSpec]) -> list[dict]:
  """One row per finished run (failed runs get status 'failed'). Keys starting with ``_``
  (the keep ratios of every round) are for the plots and are not written to runs.csv."""
  runs_dir = os.path.join(os.path.abspath(workdir), "runs")
  rows = []
  for spec in specs:
    st = run_state(runs_dir, spec.name)
    if st == "todo":
      continue
    row: dict[str, Any] = {
      "run": spec.name,
      "method": spec.label,
      "target_sparsity": spec.target,
      "seed": spec.seed,
      "status": st,
    }
    d = os.path.join(runs_dir, spec.name)
    if st == "failed":
      row["error"] = _read_json(os.path.join(d, "failed.json")).get("error", "")
    else:
      row.update(_finished_row(d))
    rows.append(row)
  return rows


def write_csv(rows: list[dict], path: str) -> None:
  cols: list[str] = []
  for r in rows:
    for k in r:
      if not k.startswith("_") and k not in cols:
        cols.append(k)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
  w.writeheader()
  for r in rows:
    w.writerow({k: r.get(k, "") for k in cols})
  fileio.write_text_atomic(path, buf.getvalue())


NUMERIC_COLUMNS = (
  "target_sparsity",
  "sparsity",
  "dense_test_accuracy",
  "test_accuracy",
  "val_accuracy",
  "bits_per_weight",
  "hyperscore",
  "train_seconds",
  "wall_seconds",
  "final_rounds",
  "final_best_reward",
  "final_mean_reward",
)


def read_csv(path: str) -> list[dict]:
  """The rows of a ``runs.csv`` with the types ``collect`` gives them (numbers as floats,
  seeds as ints; empty cells dropped), so that a report can be rebuilt from the file alone."""
  rows = []
  with open(path, newline="") as f:
    for raw in csv.DictReader(f):
      row: dict[str, Any] = {}
      for k, v in raw.items():
        if v is None or v == "":
          continue
        if k in NUMERIC_COLUMNS or k.startswith("keep_"):
          row[k] = float(v)
        elif k == "seed":
          row[k] = int(v)
        else:
          row[k] = v
      rows.append(row)
  return rows
