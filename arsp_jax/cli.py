"""Shared command-line plumbing for ``train.py`` and ``eval.py``: flags -> config, user errors.

A run's configuration is a preset file loaded by ``ml_collections.config_flags``
(``--config=arsp_jax/configs/cifar10.py``, default: the ``--dataset`` preset), with any key
overridden by ``--config.KEY=VALUE``, then by the short flags of ``configs.SHORT_FLAGS``
(``--target_sparsity=0.95``) and by ``--set KEY=VALUE`` (in that order), then validated.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any, Callable

import ml_collections
from absl import flags
from ml_collections import config_flags

from arsp_jax import configs, names
from arsp_jax.configs import base
from arsp_jax.errors import (
  CheckpointError,
  ConfigError,
  DataError,
  ExportError,
  Preempted,
  TrainingError,
)

FLAGS = flags.FLAGS

#: The argv being parsed: config_flags reads the ``--config.KEY`` overrides from it (it reads
#: the list when it parses, so parse_flags can fill it for each parse, in tests too).
_CONFIG_ARGV: list[str] = []
_CONFIG_ARG = re.compile(r"^--?config(=|$)")
_DEFINE = {
  bool: flags.DEFINE_bool,
  int: flags.DEFINE_integer,
  float: flags.DEFINE_float,
  str: flags.DEFINE_string,
}


def define_flags() -> None:
  """``--config`` (+ ``--config.KEY``), the short flags, ``--set``, ``--workdir``, ``--progress``."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Preset file with get_config(), e.g. arsp_jax/configs/cifar10.py (default: the --dataset "
    "preset). Override any key with --config.KEY=VALUE, e.g. --config.arsp.population=8.",
    lock_config=False,
    accept_new_attributes=True,  # unknown keys reach configs.validate, which names them
    sys_argv=_CONFIG_ARGV,
  )
  defaults = configs.flatten(base.get_config())
  for flag, (key, help_text) in configs.SHORT_FLAGS.items():
    _DEFINE[type(defaults[key])](flag, None, f"{help_text} [{key}]")
  flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, tb/, results.json). "
    "Default: runs/<dataset>_<model>_<method>_s<seed>.",
  )
  flags.DEFINE_multi_string("set", [], "Any config key: --set arsp.population=8 (repeatable).")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "With --distributed: host:port of process 0's coordinator, for clusters jax cannot "
    "auto-detect (auto-detected: Cloud TPU, SLURM, Open MPI, Kubernetes). Needs "
    "--num_processes and --process_id.",
  )
  flags.DEFINE_integer("num_processes", None, "With --coordinator_address: processes in all.")
  flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index.")


def initialize_distributed() -> None:
  """``jax.distributed.initialize``: from the explicit flags when given, else auto-detected
  (the flags were checked by ``check_process_flags``). Its errors (no cluster detected, a
  coordinator that cannot be reached or parsed) are user errors."""
  import jax  # noqa: PLC0415

  explicit = {
    "coordinator_address": FLAGS.coordinator_address,
    "num_processes": FLAGS.num_processes,
    "process_id": FLAGS.process_id,
  }
  given = {k: v for k, v in explicit.items() if v is not None}
  try:
    jax.distributed.initialize(**given)
  except (RuntimeError, ValueError, TypeError) as e:
    detail = _one_paragraph(str(e))[:300]
    raise ConfigError(
      f"--distributed: jax.distributed.initialize failed ({type(e).__name__}: {detail}). "
      f"On a cluster jax cannot detect (Cloud TPU, SLURM, Open MPI and Kubernetes are "
      f"detected), pass --coordinator_address=HOST:PORT, --num_processes and --process_id; "
      f"check that the coordinator's address is reachable."
    ) from None


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s flags parser: absl's, with every parsing problem a ``ConfigError``.

  Without ``--config`` (when the program defines it), the ``--dataset`` preset is loaded, so
  ``--config.KEY=VALUE`` works without it. A ``--config`` file is loaded here first
  (:func:`load_config_file`), so that a file that cannot be imported or whose ``get_config()``
  fails is named with its line, not shown as a traceback. Runs inside the error boundary
  (:func:`user_errors`), like everything the entry points do.
  """
  argv = list(argv)
  try:
    if "config" in FLAGS:
      path = _config_path(argv)
      if path is None:
        path = configs.preset_path(_peek_dataset(argv))
        argv.insert(1, f"--config={path}")
      _check_config_paths(load_config_file(path), argv)
    _CONFIG_ARGV[:] = argv
    for name in [n for n in FLAGS if n.startswith("config.")]:
      delattr(FLAGS, name)  # defined by an earlier parse in this process (tests)
    return FLAGS(argv)
  except ConfigError:
    FLAGS.unparse_flags()
    raise
  except (flags.Error, OSError, KeyError, TypeError, ValueError, AttributeError) as e:
    FLAGS.unparse_flags()
    if isinstance(e, KeyError):  # config_flags: --config.SECTION.KEY with no such section
      text = (
        f"a --config.KEY flag names an unknown config section {e.args[0]}; the keys are "
        f"those of arsp_jax/configs/base.py"
      )
    else:
      text = _first_line(str(e)).removeprefix("ERROR:: ") or type(e).__name__
    raise ConfigError(f"{text}. See --help for the flags.") from None


def _check_config_paths(cfg: ml_collections.ConfigDict, argv: list[str]) -> None:
  """Every ``--config.KEY`` path checked against the configuration before config_flags
  applies it (``configs.check_path``: sections exist, values are not sections, options are
  one level deep)."""
  for a in argv[1:]:
    if a == "--":
      break
    m = re.match(r"^--?config\.([^=]*)", a)
    if m:
      configs.check_path(cfg, m.group(1))


def _first_line(text: str) -> str:
  """The message without any traceback a library put into it (config_flags does)."""
  lines = [ln.strip() for ln in text.split("Traceback (most recent call last)")[0].splitlines()]
  return " ".join(ln for ln in lines if ln).rstrip(":. ")


def _config_path(argv: list[str]) -> str | None:
  """The value of ``--config`` in ``argv`` (None when absent), with config_flags' optional
  ``:argument`` suffix (passed to ``get_config``)."""
  for i, a in enumerate(argv[1:], start=1):
    m = _CONFIG_ARG.match(a)
    if m:
      value = a[m.end() :] if m.group(1) == "=" else (argv[i + 1] if i + 1 < len(argv) else "")
      return value
    if a == "--":
      break
  return None


def load_config_file(value: str) -> ml_collections.ConfigDict:
  """Imports the ``--config`` file and calls its ``get_config()`` (with the ``:argument`` of
  ``file.py:argument``, as config_flags does); ``ConfigError`` naming the file (and the line)
  when it does not exist, cannot be imported (syntax error, failing import, an exception), has
  no ``get_config`` or returns something else than a ConfigDict."""
  import importlib.util  # noqa: PLC0415
  import traceback  # noqa: PLC0415

  path, *args = value.split(":", 1)

  hint = "a copy of one of the presets in arsp_jax/configs/ (e.g. synthetic.py), edited"
  if not path or not os.path.isfile(path):
    what = "does not exist" if not os.path.exists(path or "") else "is not a file"
    raise ConfigError(f"--config={path} {what}. Pass a Python file with get_config(): {hint}.")
  try:
    spec = importlib.util.spec_from_file_location("arsp_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get = getattr(module, "get_config", None)
    if not callable(get):
      raise ConfigError(f"--config={path} has no get_config() function. Use {hint}.")
    cfg = get(*args)
  except ConfigError:
    raise
  except Exception as e:  # the user's file: any exception is theirs to fix
    where = [f for f in traceback.extract_tb(e.__traceback__) if _same_file(f.filename, path)]
    if isinstance(e, SyntaxError) and _same_file(e.filename or "", path):
      line = f" (line {e.lineno})"
    else:
      line = f" (line {where[-1].lineno})" if where else ""
    raise ConfigError(
      f"--config={path} cannot be loaded{line}: {type(e).__name__}: {_first_line(str(e))}. "
      f"Fix the file; it must be {hint}."
    ) from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(
      f"--config={path}: get_config() returned {type(cfg).__name__}, not an "
      f"ml_collections.ConfigDict. Start from arsp_jax/configs/base.py's get_config()."
    )
  return cfg


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def _peek_dataset(argv: list[str]) -> str:
  """The value of ``--dataset`` in ``argv`` (``fashion_mnist`` when absent), normalised as
  the loader normalises it (``names.canonical``)."""
  fv = flags.FlagValues()
  flags.DEFINE_string("dataset", "fashion_mnist", "", flag_values=fv)
  fv.set_gnu_getopt(True)
  fv(argv, known_only=True)
  return names.canonical(fv.dataset)


def config_from_flags():
  """The validated configuration the parsed flags describe (validated here, once: the entry
  point; ``loop.run(..., validated=True)`` then trusts it). Names typed in another case or
  spelling (``--dataset=Fashion-MNIST``) are normalised first (``names.canonical``); flags the
  chosen method ignores are named in a one-line warning on stderr."""
  cfg = FLAGS.config
  if cfg is None:  # flags parsed without parse_flags
    cfg = configs.get_config(FLAGS.dataset or "fashion_mnist")
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(
      f"--config={config_flags.get_config_filename(FLAGS['config'])} cannot be loaded (its "
      f"get_config() returns no ConfigDict). Pass a preset such as "
      f"{', '.join(_preset_files())}, or a copy of one."
    )
  overrides = {
    key: getattr(FLAGS, flag)
    for flag, (key, _) in configs.SHORT_FLAGS.items()
    if getattr(FLAGS, flag) is not None
  }
  overrides.update(configs.parse_sets(FLAGS.set))
  cfg = configs.apply_overrides(cfg, overrides)
  for key in ("dataset", "model", "method"):
    cfg[key] = names.canonical(cfg[key])
  check_process_flags(cfg)
  if FLAGS.workdir is not None and not FLAGS.workdir.strip():
    raise ConfigError(
      "--workdir= is empty. Pass a directory, or leave --workdir out for "
      "runs/<dataset>_<model>_<method>_s<seed>."
    )
  configs.validate(cfg)
  given = set(overrides) | {
    a.split("=", 1)[0][len("--config.") :] for a in _CONFIG_ARGV if a.startswith("--config.")
  }
  ignored = configs.ignored_keys(cfg, given)
  if ignored:
    print(
      f"warning: --method={cfg.method} ignores {', '.join(configs.label(k) for k in ignored)} "
      f"(set, but not used by this method).",
      file=sys.stderr,
    )
  return cfg


def _preset_files() -> list[str]:
  return sorted(
    {
      os.path.join("arsp_jax", "configs", os.path.basename(configs.preset_path(d)))
      for d in configs.PRESETS
    }
  )


def check_process_flags(cfg) -> None:
  """The multi-process flags only with ``--distributed``, and all three or none."""
  if cfg.distributed:
    explicit = {
      k: getattr(FLAGS, k) for k in ("coordinator_address", "num_processes", "process_id")
    }
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) != len(explicit):
      missing = ", ".join(f"--{k}" for k in explicit if k not in given)
      raise ConfigError(f"--{given[0]} needs {missing} as well (one value per process).")
    if given and not 0 <= FLAGS.process_id < FLAGS.num_processes:
      raise ConfigError(
        f"--process_id={FLAGS.process_id} must be in [0, --num_processes={FLAGS.num_processes})."
      )
    return
  for flag in ("coordinator_address", "num_processes", "process_id"):
    if getattr(FLAGS, flag) is not None:
      raise ConfigError(
        f"--{flag} is for multi-host runs: add --distributed (without it the run is one "
        f"process and --{flag} would be ignored)."
      )


def default_workdir(cfg) -> str:
  return f"runs/{cfg.dataset}_{cfg.model}_{cfg.method}_s{cfg.seed}"


#: Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM).
EXIT_PREEMPTED = 143
#: Exit status of a user error (the message says what to change) and of an internal error.
EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 2, 1
USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, ExportError)


@contextlib.contextmanager
def user_errors(workdir: str | Callable[[], str | None] | None = None):
  """The error boundary of every entry point: no exception reaches the terminal as a traceback.

  * a user mistake (``errors.py``; an operating-system error on a named file: permissions,
    disk full, ...) -> one paragraph on stderr starting with ``error:``, exit status 2;
  * a pre-empted run (SIGTERM, checkpoint saved) -> a one-line note, exit 143; Ctrl-C -> 130;
  * anything else is a bug: a short message on stderr naming the file that holds the full
    traceback (``traceback-<time>-<pid>.txt`` in ``workdir`` when it is a directory, else
    a temporary file), exit status 1.

  ``workdir``: the run directory, or a function returning it (read when an error happens).
  """
  try:
    yield
  except USER_ERRORS as e:
    _exit(f"error: {_one_paragraph(str(e))}", EXIT_USER_ERROR)
  except Preempted as e:
    _exit(str(e), EXIT_PREEMPTED)
  except KeyboardInterrupt:
    _exit("interrupted: rerun the same command to resume from the last checkpoint.", 130)
  except OSError as e:
    if e.filename is None:
      _internal_error(e, workdir)
    _exit(
      f"error: cannot use {e.filename}: {e.strerror or e}. Check that the path exists, that "
      f"you may read and write it and that the disk is not full, then rerun (a rerun "
      f"resumes from the last checkpoint).",
      EXIT_USER_ERROR,
    )
  except Exception as e:  # noqa: BLE001 - the boundary: a bug, reported with its traceback file
    _internal_error(e, workdir)


def _exit(message: str, code: int):
  print(message, file=sys.stderr)
  sys.exit(code)


def _one_paragraph(text: str) -> str:
  return " ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())


def _internal_error(e: BaseException, workdir) -> None:
  """Saves ``e``'s traceback to a file and exits 1 with a short message naming it."""
  import datetime  # noqa: PLC0415
  import tempfile  # noqa: PLC0415
  import traceback  # noqa: PLC0415

  text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
  text = f"{' '.join(sys.argv)}\n\n{text}"
  try:
    wd = workdir() if callable(workdir) else workdir
  except Exception:  # noqa: BLE001 - e.g. flags not parsed: no workdir then
    wd = None
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path = None
  if wd and os.path.isdir(wd) and os.access(wd, os.W_OK):
    path = os.path.join(os.path.abspath(wd), f"traceback-{stamp}-{os.getpid()}.txt")
    try:
      with open(path, "w") as f:
        f.write(text)
    except OSError:
      path = None
  if path is None:
    fd, path = tempfile.mkstemp(prefix=f"arsp_jax-traceback-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
      f.write(text)
  summary = _one_paragraph(f"{type(e).__name__}: {e}")
  summary = summary if len(summary) <= 300 else summary[:297] + "..."
  _exit(
    f"internal error (a bug in arsp_jax, not in your input): {summary}. The full traceback is "
    f"in {path}; please include it when reporting the problem.",
    EXIT_INTERNAL_ERROR,
  )


def _flag_workdir() -> str | None:
  return FLAGS.workdir if "workdir" in FLAGS and FLAGS.is_parsed() else None


def run(main: Callable[[list[str]], Any]) -> None:
  """``train.py``'s and ``eval.py``'s ``__main__``: absl's ``app.run`` with the flags parsed by
  :func:`parse_flags` and everything — parsing included — inside :func:`user_errors`."""
  from absl import app  # noqa: PLC0415

  with user_errors(_flag_workdir):
    app.run(main, flags_parser=parse_flags)


def call(main: Callable[[list[str]], Any], argv: list[str]) -> int:
  """Runs an entry point's ``main`` in this process as :func:`run` runs it from the command
  line (flags parsed from ``argv``, the same error boundary); returns its exit status."""
  FLAGS.unparse_flags()
  try:
    with user_errors(_flag_workdir):
      main(parse_flags(argv))
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return 0
