"""Changing a configuration from the command line: short flags, ``--set`` and study variants.

``SHORT_FLAGS`` names the flags users type (``--dataset``, ``--target_sparsity``, ...) and the
key each one sets; ``parse_sets`` reads ``--set key=value`` items, ``parse_value`` one value
(also the study harness's ``arsp@key=value`` variants); ``apply_overrides`` sets dotted keys.
"""

from __future__ import annotations

import ml_collections

from arsp_jax.errors import ConfigError

#: Options whose keys are free (checked against the model's / dataset's options by validate).
OPTION_SECTIONS = ("model_kwargs", "dataset_kwargs")

#: ``--flag`` -> (dotted config key, help). The flag's type is the key's type in base.py; every
#: flag defaults to None = "the --config file's (or the --dataset preset's) value".
SHORT_FLAGS = {
  "dataset": (
    "dataset",
    "fashion_mnist (default, embedded), cifar10, synthetic, or a tensorflow-datasets name such "
    "as imagenet2012 (needs --data_dir). Without --config it also picks that dataset's preset.",
  ),
  "data_dir": (
    "data_dir",
    "Directory holding the dataset files (used as given, or the run fails).",
  ),
  "model": ("model", "mlp, cnn_small, vgg_small, resnet18, resnet50, mobilenet_v2."),
  "method": (
    "method",
    "arsp (default: dense -> ARSP -> fine-tune), dense, a baseline (random, magnitude, "
    "global_magnitude, taylor, gmp), an ablation (arsp_fixed, arsp_random_search) or control: "
    "see arsp_jax/pruning/methods.py.",
  ),
  "seed": ("seed", "Random seed (data order, init, masks, agent)."),
  "epochs": ("epochs", "Dense-phase epochs."),
  "batch_size": ("batch_size", "Global batch size (divisible by the device count)."),
  "learning_rate": ("learning_rate", "Dense-phase Adam learning rate."),
  "val_size": ("val_size", "Validation images carved from the training split."),
  "input_workers": (
    "input_workers",
    "grain worker processes decoding tfds batches ahead of the step (-1: one per core, max 8; "
    "0: in the training process).",
  ),
  "init_from": ("init_from", "Workdir of a finished dense run to start ARSP from."),
  "score": ("arsp.score", "Survival score: magnitude, taylor or seed."),
  "granularity": (
    "arsp.granularity",
    "weight (unstructured), channel (whole filters) or word (64-bit words per output).",
  ),
  "temperature": ("arsp.temperature", "Reservoir sampling temperature (0 = top-k)."),
  "lambda_density": ("arsp.lambda_density", "Reward penalty per unit of density."),
  "target_sparsity": ("arsp.target_sparsity", "Budget: final overall sparsity (negative = off)."),
  "prune_every": ("arsp.prune_every", "Training steps between pruning rounds."),
  "population": ("arsp.population", "Candidate allocations the agent scores per round."),
  "prune_epochs": ("arsp.epochs", "ARSP-phase epochs."),
  "finetune_epochs": ("finetune.epochs", "Fine-tuning epochs (masks frozen)."),
  "finetune_lr": ("finetune.learning_rate", "Fine-tuning learning rate."),
  "channel_multiple": ("arsp.channel_multiple", "Round kept channel counts to this multiple."),
  "nan_policy": (
    "nan_policy",
    "Non-finite loss or gradient: stop (default: end the run, naming the step and the last "
    "good checkpoint) or skip (skip the step).",
  ),
  "checkpoint_every_steps": (
    "checkpoint_every_steps",
    "Also checkpoint every n training steps (default 0: at the end of every epoch only).",
  ),
  "steps_per_window": (
    "steps_per_window",
    "Training steps compiled into one program call (a lax.scan over stacked batches; default "
    "1). A pruning round starts its window; windows also end at epoch ends and checkpoints.",
  ),
  "distributed": ("distributed", "Call jax.distributed.initialize() (multi-host pods)."),
}

#: dotted key -> its short flag ("--target_sparsity"), for messages.
FLAG_OF = {key: f"--{flag}" for flag, (key, _) in SHORT_FLAGS.items()}


def apply_overrides(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of ``c`` with dotted keys (``'arsp.score'``) set from ``overrides`` (typed values).

  A value of another type than the key's (a string for a number, a bool for an int) is a
  ``ConfigError``; an int is accepted for a float. Changing ``model`` drops the preset's
  ``model_kwargs`` (they belong to the preset's model, e.g. an MLP's hidden sizes).
  """
  c = ml_collections.ConfigDict(c.to_dict())
  if "model" in overrides and overrides["model"] != c.model:
    c.model_kwargs = ml_collections.ConfigDict()
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      if not isinstance(node, ml_collections.ConfigDict) or p not in node:
        raise ConfigError(f"Unknown config section {p!r} in {key!r}.")
      node = node[p]
    free = bool(parents) and parents[0] in OPTION_SECTIONS
    if leaf not in node and not free:
      raise ConfigError(f"Unknown config key {key!r}.")
    _set(node, leaf, key, value)
  return c


_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_KIND.update({tuple: "a tuple such as (1,2)", ml_collections.ConfigDict: "a section of keys"})


def _set(node: ml_collections.ConfigDict, leaf: str, key: str, value) -> None:
  old = node[leaf] if leaf in node else None
  # ConfigDict would store True in an int field (bool is an int) and 1.0 in a float one.
  ok = not (isinstance(value, bool) and old is not None and not isinstance(old, bool))
  if ok:
    try:
      node[leaf] = value
    except TypeError:
      ok = False
  if not ok:
    raise ConfigError(f"{FLAG_OF.get(key, key)} expects {_KIND[type(old)]}, got {value!r}.")


def parse_sets(items) -> dict:
  """``['key=value', ...]`` (``--set`` flags) -> ``{key: typed value}``."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ConfigError(f"--set expects key=value, got {item!r}.")
    k, v = item.split("=", 1)
    out[k.strip()] = parse_value(v)
  return out


def parse_value(text: str):
  """Parses ``--set key=value`` values: int, float, bool, tuple, or string."""
  t = text.strip()
  if t.lower() in ("true", "false"):
    return t.lower() == "true"
  for cast in (int, float):
    try:
      return cast(t)
    except ValueError:
      pass
  if t.startswith("(") or t.startswith("["):
    inner = t.strip("()[] ")
    return tuple(parse_value(x) for x in inner.split(",") if x.strip())
  return t
