"""Comparison harness: a grid of methods x sparsities x seeds, statistics, plots.

  python -m arsp_jax.study --workdir=studies/fmnist_mlp \\
      --methods=arsp,random,magnitude,global_magnitude,taylor,gmp \\
      --sparsities=0.5,0.8,0.9,0.95 --seeds=3

(``python -m arsp_jax.compare`` is the same command.) Every pruning run of a seed starts from
the same dense run (``dense_s<seed>``, trained once) and an unpruned ``control`` is trained
through the same phases, so every method gets the same start, the same number of epochs, the
same fine-tuning and the same evaluation. A method may carry a score, ``arsp:taylor``, or
config overrides, ``arsp@arsp.population=32``.

Runs live in ``<workdir>/runs/<name>/``; rerunning resumes the study, and several harness
processes may share it (``study/grid.py``). When no run is left, the study's files are written
(each atomically):

* ``runs.csv``  — one row per run;
* ``report.md`` — mean, std and 95% CI per (method, sparsity), Welch t-tests of ARSP against
  every other method, one-way ANOVA across methods, per-layer keep ratios and their regression
  within one method, and a plain statement of where ARSP wins, ties or loses;
* ``pareto.png`` (accuracy vs sparsity and vs effective bits per weight) and
  ``keep_ratios.png`` (the agent's per-layer keep ratios over rounds).

``--report_only`` rewrites those files from the finished runs without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import jax
from absl import logging as absl_logging

from arsp_jax import configs as config_lib
from arsp_jax import fileio
from arsp_jax.errors import ConfigError
from arsp_jax.study import frontier, grid, protocol, report
from arsp_jax.train import resume

DEFAULT_METHODS = "arsp,random,magnitude,global_magnitude,taylor,gmp"
DEFAULT_SPARSITIES = "0.5,0.8,0.9,0.95"
DEFAULTS = {
  "dataset": "fashion_mnist",
  "methods": DEFAULT_METHODS,
  "sparsities": DEFAULT_SPARSITIES,
  "seeds": "3",
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m arsp_jax.study",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--workdir", required=True, help="Study directory (runs/, runs.csv, report.md).")
  p.add_argument("--dataset", default=None, help="Dataset (default: fashion_mnist).")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--model", default=None, help="Model (default: the dataset preset's).")
  p.add_argument(
    "--methods",
    default=None,
    help="Comma-separated pruning methods; method:score for a score variant "
    f"(default: {DEFAULT_METHODS}).",
  )
  p.add_argument("--sparsities", default=None, help=f"(default: {DEFAULT_SPARSITIES})")
  p.add_argument(
    "--seeds", default=None, help="A count (3 = seeds 0,1,2) or a list (0,4,7); default 3."
  )
  p.add_argument(
    "--control",
    default="true",
    choices=("true", "false"),
    help="Also train the unpruned control through the same phases.",
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="Any config key for every run (repeatable).",
  )
  p.add_argument(
    "--protocol",
    default=None,
    help="A study protocol (protocol.json, written before the runs): its dataset, overrides, "
    "arms (methods x sparsities x seeds) and reference replace --dataset/--methods/"
    "--sparsities/--seeds/--set.",
  )
  p.add_argument("--report_only", action="store_true", help="Only rewrite the study files.")
  p.add_argument("--max_runs", type=int, default=None, help="Stop after this many runs.")
  p.add_argument("--title", default=None)
  p.add_argument(
    "--machine",
    default=None,
    help="Machine description for the report (default: read from this machine; "
    "with --report_only, the one recorded when the runs were made).",
  )
  return p


def parse_seeds(text: str) -> list[int]:
  """``3`` -> [0, 1, 2]; ``0,4,7`` -> [0, 4, 7]."""
  parts = [x for x in text.split(",") if x.strip()]
  try:
    nums = [int(x) for x in parts]
  except ValueError:
    nums = []
  if not nums or (len(nums) == 1 and nums[0] < 1) or (len(nums) > 1 and min(nums) < 0):
    raise ValueError(
      f"--seeds must be a positive count (3 = seeds 0,1,2) or a list of seeds (0,4,7), got {text!r}"
    )
  return list(range(nums[0])) if len(nums) == 1 else nums


def machine_description() -> str:
  try:
    dev = jax.devices()[0]
    accel = f"{jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}"
  except RuntimeError:  # pragma: no cover - reporting only
    accel = "?"
  return f"{platform.node()}: {os.cpu_count()} CPU cores, {accel}, jax {jax.__version__}"


PROTOCOL_REPLACES = ("methods", "sparsities", "seeds", "set", "dataset")


def _plan_protocol(args) -> tuple[list[grid.RunSpec], Any]:
  proto = protocol.load(args.protocol)
  clash = [k for k in PROTOCOL_REPLACES if getattr(args, k)]
  if clash:
    raise ConfigError(
      f"--protocol sets the study's {', '.join(clash)}; drop "
      f"{', '.join('--' + k for k in clash)} (change the protocol in a commit before its runs)."
    )
  specs = protocol_plan(proto, args)
  over: dict[str, Any] = {}
  if args.model:
    over["model"] = args.model
  if args.data_dir:
    over["data_dir"] = args.data_dir
  over.update(config_lib.parse_sets([f"{k}={v}" for k, v in protocol.overrides(proto).items()]))
  base = config_lib.apply_overrides(config_lib.get_config(proto["dataset"]), over)
  protocol.check_settings(proto, base)
  return specs, base


def protocol_plan(proto: dict, args) -> list[grid.RunSpec]:
  """The protocol's runs in order, the cell its headroom decided first once it is decided (from
  the runs finished so far in ``args.workdir``)."""
  control = args.control == "true"
  every = protocol.plan(proto, control=control)
  rows = grid.collect(args.workdir, every) if args.workdir else []
  return protocol.plan(proto, control=control, first=protocol.decided_sparsity(proto, rows))


def plan(args) -> tuple[list[grid.RunSpec], Any]:
  """The study's runs and base configuration from the arguments (or the protocol);
  ValueError/ConfigError on any user mistake (checked before anything is trained)."""
  if args.protocol:
    specs, base = _plan_protocol(args)
    _check_plan(specs, base)
    return specs, base
  for key, value in DEFAULTS.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  seeds = parse_seeds(args.seeds)
  try:
    sparsities = [float(x) for x in args.sparsities.split(",") if x.strip()]
  except ValueError:
    raise ValueError(
      f"--sparsities={args.sparsities}: give comma-separated numbers in (0, 1), e.g. 0.9,0.95"
    ) from None
  for sp in sparsities:
    if not 0.0 < sp < 1.0:
      raise ValueError(f"--sparsities: {sp} is outside (0, 1)")
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  specs = grid.plan_grid(methods, sparsities, seeds, control=args.control == "true")
  over: dict[str, Any] = {}
  if args.model:
    over["model"] = args.model
  if args.data_dir:
    over["data_dir"] = args.data_dir
  over.update(config_lib.parse_sets(args.set))
  base = config_lib.apply_overrides(config_lib.get_config(args.dataset), over)
  _check_plan(specs, base)
  return specs, base


def _check_plan(specs, base) -> None:
  config_lib.validate(base)
  for spec in specs:
    if spec.overrides:
      config_lib.validate(grid.run_config(base, spec, "/nonexistent"))
  for sc in {s.score for s in specs if s.score}:
    if sc not in config_lib.SCORES:
      raise ConfigError(
        f"--methods: unknown score {sc!r} (choose from {', '.join(config_lib.SCORES)})."
      )


def _recorded_study(
  study_path: str, base_dict: dict, report_only: bool, declared: Sequence[str] = ()
) -> dict:
  """The study.json already in the workdir ({} if none). A different base configuration is
  refused (runs of two configurations would be mixed in one report); keys added to the code
  after the study started (absent from its record) are not differences, nor the ``declared``
  keys (a protocol's ``reference.settings``, committed when its arm opened and checked against
  the configuration by ``protocol.check_settings``)."""
  if not os.path.exists(study_path):
    return {}
  with open(study_path) as f:
    old = json.load(f)
  diff = resume.config_diff(old.get("base_config", {}), base_dict, common_only=True)
  diff = [d for d in diff if d.split(":", 1)[0] not in set(declared)]
  if diff and not report_only:
    raise ConfigError(
      f"{os.path.dirname(study_path)} holds a study with another base configuration "
      f"({'; '.join(diff[:5])}). Use a new --workdir."
    )
  return old


def main(argv: Sequence[str] | None = None) -> int:
  """The harness inside the entry points' error boundary (``cli.user_errors``): a user error
  is one paragraph and status 2, a bug a short message naming the file that holds its
  traceback (in the study's workdir) and status 1; argparse's own errors exit 2."""
  from arsp_jax import cli  # noqa: PLC0415

  args = _parser().parse_args(argv)
  wd = os.path.abspath(args.workdir) if args.workdir.strip() else None
  try:
    with cli.user_errors(workdir=wd):
      if wd is None:
        raise ConfigError("--workdir= is empty: pass the study's directory.")
      return _main(args, argv, wd)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else 1


def _main(args, argv: Sequence[str] | None, wd: str) -> int:
  study_path = os.path.join(wd, "study.json")
  try:
    specs, base = plan(args)
    base_dict = json.loads(json.dumps(base.to_dict()))
    declared = []
    if args.protocol:
      settings = protocol.load(args.protocol)["reference"].get("settings")
      declared = list(settings) if isinstance(settings, dict) else []
    old = _recorded_study(study_path, base_dict, args.report_only, declared)
  except (ValueError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(wd, exist_ok=True)
  if args.protocol:
    try:
      _place_protocol(args.protocol, wd)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  argv_list = list(sys.argv[1:] if argv is None else argv)
  # The command that runs the grid (a --report_only rerun reports the grid's command).
  command = "python -m arsp_jax.study " + " ".join(a for a in argv_list if a != "--report_only")
  machine = args.machine
  if machine is None and args.report_only:
    machine = old.get("meta", {}).get("machine")
  meta = {
    "title": args.title or f"{base.dataset} / {base.model}",
    "command": command,
    "machine": machine or machine_description(),
  }
  if not args.report_only:
    record = {
      "base_config": base_dict,
      "meta": meta,
      "runs": [dataclasses.asdict(s) for s in specs],
    }
    fileio.write_json_atomic(study_path, record)
    try:
      replan = None
      if args.protocol:
        proto = protocol.load(args.protocol)
        replan = lambda: protocol_plan(proto, args)  # noqa: E731
      counts = grid.run_grid(base, specs, wd, max_runs=args.max_runs, replan=replan)
    except KeyboardInterrupt:
      print(
        "interrupted: rerun the same command to continue the study (finished runs are "
        "kept, the interrupted one resumes from its last checkpoint).",
        file=sys.stderr,
      )
      return 130
    print(f"ran {counts['ran']}, already done {counts['skipped']}, failed {counts['failed']}")
  report.write_study_files(wd, specs, meta)
  if args.protocol:
    lines = frontier.section(wd)
    fileio.write_text_atomic(os.path.join(wd, "report.md"), "\n".join(lines).rstrip() + "\n")
  return 0


def _place_protocol(path: str, wd: str) -> None:
  """The protocol beside the study's runs (``<workdir>/protocol.json``): copied there if absent;
  a different one already there is refused (one study, one protocol)."""
  dest = os.path.join(wd, "protocol.json")
  with open(path) as f:
    text = f.read()
  if os.path.exists(dest):
    if os.path.samefile(dest, path):
      return
    with open(dest) as f:
      if json.loads(f.read()) != json.loads(text):
        raise ConfigError(f"{dest} holds another protocol; a study has one protocol.")
    return
  fileio.write_text_atomic(dest, text)


def run() -> None:
  """Entry point of ``python -m arsp_jax.study`` and ``python -m arsp_jax.compare``."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  sys.exit(main())


if __name__ == "__main__":
  run()
