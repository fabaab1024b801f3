"""A study's protocol: what is compared, with what, how — written and committed before its runs.

A protocol is a JSON file (``results/<study>/protocol.json``) that fixes, before the first run:

* the runs: ``dataset``, config overrides for every run (``set``), and *arms*, each a list of
  methods × target sparsities × seeds (an arm that is not ``open`` is declared but not run yet:
  e.g. the agent's arm waits for the agent's final defaults);
* the one ``reference`` method and its settings, and the methods it is compared with;
* the ``metric`` of the final tables (test accuracy) and the ``tuning_metric`` (validation
  accuracy: anything tuned is tuned on it, never on the test set);
* the statistics: paired by seed (every method of a seed starts from the same dense run), the
  paired test, the bootstrap CI, Holm's correction over every comparison of the reference in a
  cell, and the level ``alpha``;
* the frontier: the accuracy drops (points below the dense start) at which the density each
  method needs is interpolated.

``python -m arsp_jax.study --protocol=PATH --workdir=DIR`` runs the open arms; the report reads
its reference from the protocol and refuses one the protocol does not name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from arsp_jax.errors import ConfigError
from arsp_jax.study import grid, paired

REQUIRED = ("study", "dataset", "seeds", "arms", "reference", "metric", "statistics")
STAT_KEYS = ("paired_by", "test", "ci", "correction", "alpha", "bootstrap_resamples")


def _err(path: str, msg: str) -> ConfigError:
  return ConfigError(f"protocol {path}: {msg}")


def _check_arm(path: str, i: int, arm: Any) -> None:
  if not isinstance(arm, dict):
    raise _err(path, f"arms[{i}] is not an object")
  for key in ("name", "methods", "sparsities", "seeds", "open"):
    if key not in arm:
      raise _err(path, f"arms[{i}] lacks {key!r}")
  if not isinstance(arm["open"], bool):
    raise _err(path, f"arms[{i}].open must be true or false")
  for sp in arm["sparsities"]:
    if not isinstance(sp, (int, float)) or not 0.0 < sp < 1.0:
      raise _err(path, f"arms[{i}] ({arm['name']}): sparsity {sp!r} is outside (0, 1)")
  for s in arm["seeds"]:
    if not isinstance(s, int) or s < 0:
      raise _err(path, f"arms[{i}] ({arm['name']}): seed {s!r} is not a non-negative integer")
  for label in arm["methods"]:
    try:
      grid.parse_label(label)
    except ValueError as e:
      raise _err(path, f"arms[{i}] ({arm['name']}): {e}") from None


def validate(proto: Any, path: str = "<protocol>") -> dict:
  """The protocol, checked; ConfigError naming the key on any problem."""
  if not isinstance(proto, dict):
    raise _err(path, "is not a JSON object")
  missing = [k for k in REQUIRED if k not in proto]
  if missing:
    raise _err(path, f"lacks {', '.join(map(repr, missing))}")
  if not isinstance(proto["arms"], list) or not proto["arms"]:
    raise _err(path, "arms must be a non-empty list")
  for i, arm in enumerate(proto["arms"]):
    _check_arm(path, i, arm)
  ref = proto["reference"]
  if not isinstance(ref, dict) or "method" not in ref:
    raise _err(path, "reference must be an object with a 'method'")
  if ref["method"] not in declared_methods(proto):
    raise _err(path, f"the reference {ref['method']!r} is in no arm")
  order = proto.get("run_order", [])
  if not isinstance(order, list) or not all(
    isinstance(t, (int, float)) and any(abs(t - x) < 1e-12 for a in proto["arms"]
                                        for x in a["sparsities"]) for t in order
  ):  # fmt: skip
    raise _err(path, f"run_order {order!r} must list sparsities that the arms declare")
  stat = proto["statistics"]
  absent = [k for k in STAT_KEYS if k not in stat]
  if absent:
    raise _err(path, f"statistics lacks {', '.join(map(repr, absent))}")
  if not 0.0 < float(stat["alpha"]) < 1.0:
    raise _err(path, "statistics.alpha must be in (0, 1)")
  return proto


def load(path: str) -> dict:
  """Reads and validates a protocol file (ConfigError on a missing, unreadable or bad file)."""
  try:
    with open(path) as f:
      proto = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"--protocol={path} does not exist.") from None
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"--protocol={path} is not a readable JSON file ({e}).") from None
  return validate(proto, path)


def declared_methods(proto: dict) -> list[str]:
  """Every method label the protocol names, in the order of its arms."""
  return list(dict.fromkeys(m for arm in proto["arms"] for m in arm["methods"]))


def check_reference(proto: dict, reference: str) -> str:
  """``reference`` when it is the protocol's; ConfigError otherwise (a reference picked after
  the runs turns a tie into a win)."""
  declared = proto["reference"]["method"]
  if reference != declared:
    raise ConfigError(
      f"the reference {reference!r} is not the one the protocol of {proto['study']!r} declares "
      f"({declared!r}); a study's reference is fixed before its runs."
    )
  return declared


def check_settings(proto: dict, base) -> None:
  """The reference's recorded settings (``reference.settings``: ``arsp.*`` keys written when its
  arm opened) against the configuration the runs would use: ``ConfigError`` naming every key
  whose value changed since (the reference's runs would not be the ones the protocol declared)."""
  settings = proto["reference"].get("settings")
  if not isinstance(settings, dict):
    return
  changed = []
  for key, want in settings.items():
    section, _, name = key.partition(".")
    if section == "arsp" and name and base.arsp.get(name) != want:
      changed.append(f"{key}: protocol {want!r}, configuration {base.arsp.get(name)!r}")
  if changed:
    raise ConfigError(
      "The reference's settings recorded in the protocol differ from this configuration ("
      + "; ".join(changed)
      + "): run the study with the code and defaults the protocol names."
    )


def all_seeds(proto: dict) -> list[int]:
  return sorted({s for arm in proto["arms"] for s in arm["seeds"]} | set(proto["seeds"]))


def plan(
  proto: dict, open_only: bool = True, control: bool = True, first: float | None = None
) -> list[grid.RunSpec]:
  """The runs of the protocol in execution order: the arms in the order listed (each
  sparsity-major, as ``grid.plan_grid``), every seed's dense start just before the first arm
  that needs it, and the controls (every seed) after the first arm. ``first``: a sparsity whose
  runs of every later arm come right after the first arm (the cell the headroom decided,
  :func:`decided_sparsity`), before the others. A run named by two arms is planned once.
  ``open_only``: leave out the arms that are not open. The protocol's optional ``run_order`` (a
  list of sparsities) schedules the later arms' runs at those sparsities next, sparsity by
  sparsity across the arms; it changes when a run is made, never which runs."""
  specs: list[grid.RunSpec] = []
  seen: set[str] = set()

  def add(items):
    for spec in items:
      if spec.name not in seen:
        seen.add(spec.name)
        specs.append(spec)

  arms = [a for a in proto["arms"] if a["open"] or not open_only]
  for i, arm in enumerate(arms):
    add(grid.plan_grid([], [], arm["seeds"], control=False))
    add(grid.plan_grid(arm["methods"], arm["sparsities"], arm["seeds"], control=False))
    if i == 0 and control:
      seeds = all_seeds(proto)
      add(grid.plan_grid([], [], seeds, control=False))
      add(s for s in grid.plan_grid([], [], seeds, control=True) if s.method == "control")
    if i == 0:
      for t in ([first] if first is not None else []) + list(proto.get("run_order", [])):
        for later in arms[1:]:
          if any(abs(x - t) < 1e-12 for x in later["sparsities"]):
            add(grid.plan_grid([], [], later["seeds"], control=False))
            add(grid.plan_grid(later["methods"], [t], later["seeds"], control=False))
  return specs


def decided_sparsity(proto: dict, rows: Sequence[dict]) -> float | None:
  """The protocol's headroom decision: the sparsity of the headroom arm with the largest
  cross-validated headroom (``paired.headroom``), once every run the arm declares has finished;
  None before that (or without a headroom arm)."""
  arm = headroom_arm(proto)
  if arm is None:
    return None
  done = {r["run"] for r in rows if r.get("status") == "done"}
  sub = {"arms": [dict(arm, open=True)], "seeds": arm["seeds"]}
  if any(s.name not in done for s in plan(sub, control=False) if s.method != "dense"):
    return None
  best = None
  for t in arm["sparsities"]:
    h = arm_headroom(arm, rows, t)
    if h is not None and (best is None or h["cross_validated"] > best[1]):
      best = (float(t), h["cross_validated"])
  return None if best is None else best[0]


def headroom_arm(proto: dict) -> dict | None:
  """The arm the protocol's ``headroom`` names (None without one)."""
  name = proto.get("headroom", {}).get("arm")
  return next((a for a in proto["arms"] if a["name"] == name), None)


def arm_headroom(arm: dict, rows: Sequence[dict], target: float) -> dict | None:
  """``paired.headroom`` of a headroom arm at ``target``: its rules against its random
  allocations, all of them, on the arm's own seeds (the rules' runs of other arms' seeds
  play no part, so the decision cannot move as those finish)."""
  allocs = [m for m in arm["methods"] if m.startswith("random_alloc")]
  rules = [m for m in arm["methods"] if m not in allocs]
  return paired.headroom(
    rows, allocs, rules, target, min_allocations=len(allocs), seeds=arm["seeds"]
  )


def arm_of(proto: dict, label: str) -> str | None:
  for arm in proto["arms"]:
    if label in arm["methods"]:
      return arm["name"]
  return None


def overrides(proto: dict) -> dict[str, str]:
  """The config overrides every run of the study gets (``set``), as KEY -> value text."""
  return dict(proto.get("set", {}))


def find(study_dir: str) -> dict | None:
  """The protocol of a study directory (``protocol.json``), or None."""
  path = os.path.join(study_dir, "protocol.json")
  return load(path) if os.path.exists(path) else None


def headline_sparsities(proto: dict) -> Sequence[float]:
  return proto.get("headline_sparsities", [])
