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

import ml_collections
from absl import flags
from ml_collections import config_flags

from arsp_jax import configs
from arsp_jax.configs import base
from arsp_jax.errors import CheckpointError, ConfigError, DataError, Preempted, TrainingError

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
  """``jax.distributed.initialize``: from the explicit flags when given, else auto-detected."""
  import jax

  explicit = {
    "coordinator_address": FLAGS.coordinator_address,
    "num_processes": FLAGS.num_processes,
    "process_id": FLAGS.process_id,
  }
  given = [k for k, v in explicit.items() if v is not None]
  if given and len(given) != len(explicit):
    missing = ", ".join(f"--{k}" for k in explicit if k not in given)
    raise ConfigError(f"--{given[0]} needs {missing} as well (one value per process).")
  if given and not 0 <= FLAGS.process_id < FLAGS.num_processes:
    raise ConfigError(
      f"--process_id={FLAGS.process_id} must be in [0, --num_processes={FLAGS.num_processes})."
    )
  jax.distributed.initialize(**(explicit if given else {}))


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s flags parser: absl's, with flag errors as one paragraph and exit status 2.

  Without ``--config`` (when the program defines it), the ``--dataset`` preset is loaded, so
  ``--config.KEY=VALUE`` works without it.
  """
  argv = list(argv)
  if "config" in FLAGS and not any(_CONFIG_ARG.match(a) for a in argv[1:]):
    argv.insert(1, f"--config={configs.preset_path(_peek_dataset(argv))}")
  _CONFIG_ARGV[:] = argv
  for name in [n for n in FLAGS if n.startswith("config.")]:
    delattr(FLAGS, name)  # defined by an earlier parse in this process (tests)
  try:
    return FLAGS(argv)
  except (flags.Error, OSError, KeyError) as e:
    FLAGS.unparse_flags()
    if isinstance(e, KeyError):  # config_flags: --config.SECTION.KEY with no such section
      e = (
        f"a --config.KEY flag names an unknown config section {e.args[0]}; the keys are "
        f"those of arsp_jax/configs/base.py"
      )
    print(f"error: {e}. See --help for the flags.", file=sys.stderr)
    sys.exit(2)


def _peek_dataset(argv: list[str]) -> str:
  """The value of ``--dataset`` in ``argv`` (``fashion_mnist`` when absent)."""
  fv = flags.FlagValues()
  flags.DEFINE_string("dataset", "fashion_mnist", "", flag_values=fv)
  fv.set_gnu_getopt(True)
  fv(argv, known_only=True)
  return fv.dataset


def config_from_flags():
  """The validated configuration the parsed flags describe."""
  cfg = FLAGS.config
  if cfg is None:  # flags parsed without parse_flags
    cfg = configs.get_config(FLAGS.dataset or "fashion_mnist")
  if not isinstance(cfg, ml_collections.ConfigDict):
    presets = sorted(
      {
        os.path.join("arsp_jax", "configs", os.path.basename(configs.preset_path(d)))
        for d in configs.PRESETS
      }
    )
    raise ConfigError(
      f"--config={config_flags.get_config_filename(FLAGS['config'])} cannot be loaded (no such "
      f"file, or its get_config() returns no ConfigDict). Pass a preset such as "
      f"{', '.join(presets)}, or a copy of one."
    )
  overrides = {
    key: getattr(FLAGS, flag)
    for flag, (key, _) in configs.SHORT_FLAGS.items()
    if getattr(FLAGS, flag) is not None
  }
  overrides.update(configs.parse_sets(FLAGS.set))
  cfg = configs.apply_overrides(cfg, overrides)
  configs.validate(cfg)
  return cfg


def default_workdir(cfg) -> str:
  return f"runs/{cfg.dataset}_{cfg.model}_{cfg.method}_s{cfg.seed}"


#: Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM).
EXIT_PREEMPTED = 143


@contextlib.contextmanager
def user_errors():
  """Prints user mistakes as one paragraph on stderr and exits 2 (no traceback).

  Also: a pre-empted run (SIGTERM, checkpoint saved) exits 143 with a one-line note, Ctrl-C
  exits 130; an operating-system error on a named file (permissions, disk full, ...) is a
  user error too.
  """
  try:
    yield
  except (ConfigError, DataError, CheckpointError, TrainingError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except KeyboardInterrupt:
    print(
      "interrupted: rerun the same command to resume from the last checkpoint.", file=sys.stderr
    )
    sys.exit(130)
  except OSError as e:
    if e.filename is None:
      raise
    print(
      f"error: cannot use {e.filename}: {e.strerror or e}. Check that the path exists, that "
      f"you may read and write it and that the disk is not full, then rerun (a rerun "
      f"resumes from the last checkpoint).",
      file=sys.stderr,
    )
    sys.exit(2)
