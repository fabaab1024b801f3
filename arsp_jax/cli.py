"""Shared command-line plumbing for ``train.py`` and ``eval.py``: flags -> config, user errors."""

from __future__ import annotations

import contextlib
import sys

from absl import flags

from arsp_jax import configs as config_lib

FLAGS = flags.FLAGS

# flag name -> dotted config key.  Every flag defaults to None = "the preset's value".
FLAG_KEYS = {
  "data_dir": "data_dir",
  "model": "model",
  "method": "method",
  "seed": "seed",
  "epochs": "epochs",
  "batch_size": "batch_size",
  "learning_rate": "learning_rate",
  "val_size": "val_size",
  "init_from": "init_from",
  "score": "arsp.score",
  "granularity": "arsp.granularity",
  "temperature": "arsp.temperature",
  "lambda_density": "arsp.lambda_density",
  "target_sparsity": "arsp.target_sparsity",
  "prune_every": "arsp.prune_every",
  "population": "arsp.population",
  "prune_epochs": "arsp.epochs",
  "finetune_epochs": "finetune.epochs",
  "finetune_lr": "finetune.learning_rate",
  "channel_multiple": "arsp.channel_multiple",
  "nan_policy": "nan_policy",
  "checkpoint_every_steps": "checkpoint_every_steps",
}


def define_flags() -> None:
  flags.DEFINE_string(
    "dataset",
    "fashion_mnist",
    "fashion_mnist (default, embedded), cifar10, synthetic, or a "
    "tensorflow-datasets name such as imagenet2012 (needs --data_dir).",
  )
  flags.DEFINE_string("data_dir", None, "Directory holding the dataset files.")
  flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, tb/, results.json). "
    "Default: runs/<dataset>_<model>_<method>_s<seed>.",
  )
  flags.DEFINE_string("model", None, "mlp, cnn_small, vgg_small, resnet18, resnet50, mobilenet_v2.")
  flags.DEFINE_string(
    "method",
    None,
    "arsp (default: dense -> ARSP -> fine-tune), dense, a "
    "baseline (random, magnitude, global_magnitude, taylor, gmp), an ablation "
    "(arsp_fixed, arsp_random_search) or control: see arsp_jax/methods.py.",
  )
  flags.DEFINE_integer("seed", None, "Random seed (data order, init, masks, agent).")
  flags.DEFINE_integer("epochs", None, "Dense-phase epochs.")
  flags.DEFINE_integer("batch_size", None, "Global batch size (divisible by the device count).")
  flags.DEFINE_float("learning_rate", None, "Dense-phase Adam learning rate.")
  flags.DEFINE_integer("val_size", None, "Validation images carved from the training split.")
  flags.DEFINE_string("init_from", None, "Workdir of a finished dense run to start ARSP from.")
  flags.DEFINE_string("score", None, "Survival score: magnitude, taylor or seed.")
  flags.DEFINE_string("granularity", None, "weight (unstructured) or channel (whole filters).")
  flags.DEFINE_float("temperature", None, "Reservoir sampling temperature (0 = top-k).")
  flags.DEFINE_float("lambda_density", None, "Reward penalty per unit of density.")
  flags.DEFINE_float("target_sparsity", None, "Budget: final overall sparsity (negative = off).")
  flags.DEFINE_integer("prune_every", None, "Training steps between pruning rounds.")
  flags.DEFINE_integer("population", None, "Candidate allocations the agent scores per round.")
  flags.DEFINE_integer("prune_epochs", None, "ARSP-phase epochs.")
  flags.DEFINE_integer("finetune_epochs", None, "Fine-tuning epochs (masks frozen).")
  flags.DEFINE_float("finetune_lr", None, "Fine-tuning learning rate.")
  flags.DEFINE_integer("channel_multiple", None, "Round kept channel counts to this multiple.")
  flags.DEFINE_string(
    "nan_policy",
    None,
    "Non-finite loss or gradient: stop (default: end the "
    "run, naming the step and the last good checkpoint) or skip (skip the step).",
  )
  flags.DEFINE_integer(
    "checkpoint_every_steps",
    None,
    "Also checkpoint every n training steps (default 0: at the end of every epoch only).",
  )
  flags.DEFINE_multi_string("set", [], "Any config key: --set arsp.population=8 (repeatable).")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host pods).")


def config_from_flags():
  cfg = config_lib.get_config(FLAGS.dataset)
  overrides = {
    key: getattr(FLAGS, name) for name, key in FLAG_KEYS.items() if getattr(FLAGS, name) is not None
  }
  overrides["distributed"] = FLAGS.distributed
  overrides.update(config_lib.parse_sets(FLAGS.set))
  return config_lib.apply_overrides(cfg, overrides)


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
  from arsp_jax import data
  from arsp_jax.train import checkpoint, loop

  try:
    yield
  except (
    config_lib.ConfigError,
    data.DataError,
    checkpoint.CheckpointError,
    loop.TrainingError,
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except loop.Preempted as e:
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
