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

  Every key's path is checked against the configuration's structure before anything is set:
  a section must exist (``arsp``, ``finetune``, ...), a value is not a section
  (``epochs.x``), and the option sections (``model_kwargs``, ``dataset_kwargs``) are one
  level deep. A value of another type than the key's (a string for a number, a bool for an
  int) is a ``ConfigError``; an int is accepted for a float. Changing ``model`` drops the
  preset's ``model_kwargs`` (they belong to the preset's model, e.g. an MLP's hidden sizes).
  """
  c = ml_collections.ConfigDict(c.to_dict())
  for key in overrides:
    check_path(c, key)
  if "model" in overrides and overrides["model"] != c.model:
    c.model_kwargs = ml_collections.ConfigDict()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    _set(node, leaf, key, value)
  return c


def check_path(c: ml_collections.ConfigDict, key: str) -> None:
  """``ConfigError`` unless ``key`` names a key of ``c`` (or an option of an option section)."""
  if not isinstance(key, str) or not key or any(not p.strip() for p in key.split(".")):
    raise ConfigError(f"Malformed config key {key!r}: write section.key, e.g. arsp.population.")
  *parents, leaf = key.split(".")
  node = c
  for i, p in enumerate(parents):
    if parents[0] in OPTION_SECTIONS and i >= 1:
      raise ConfigError(
        f"{key!r}: {parents[0]} options are one level deep ({parents[0]}.NAME=VALUE); "
        f"{'.'.join(parents[: i + 1])} is not a section."
      )
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      raise ConfigError(f"Unknown config section {p!r} in {key!r}.")
    node = node[p]
  if not isinstance(node, ml_collections.ConfigDict):
    raise ConfigError(f"{key!r}: {'.'.join(parents)} is a value, not a section of keys.")
  free = bool(parents) and parents[0] in OPTION_SECTIONS
  if leaf not in node and not free:
    raise ConfigError(f"Unknown config key {key!r}.")


_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_KIND.update({tuple: "a tuple such as (1,2)", ml_collections.ConfigDict: "a section of keys"})


def _set(node: ml_collections.ConfigDict, leaf: str, key: str, value) -> None:
  old = node[leaf] if leaf in node else None
  # ConfigDict would store True in an int field (bool is an int) and 1.0 in a float one.
  ok = not (isinstance(value, bool) and old is not None and not isinstance(old, bool))
  if ok:
    try:
      node[leaf] = value
    except (TypeError, ValueError):
      ok = False
  if not ok:
    kind = _KIND.get(type(old), f"a value of type {type(old).__name__}")
    raise ConfigError(f"{FLAG_OF.get(key, key)} expects {kind}, got {value!r}.")


def parse_sets(items) -> dict:
  """``['key=value', ...]`` (``--set`` flags) -> ``{key: typed value}``."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ConfigError(f"--set expects key=value, got {item!r}.")
    k, v = item.split("=", 1)
    try:
      out[k.strip()] = parse_value(v)
    except ConfigError as e:
      raise ConfigError(f"--set {item}: {e}") from None
  return out


def parse_value(text: str):
  """Parses ``--set key=value`` values: int, float, bool, a flat tuple ``(32,32)`` /
  ``[32,32]`` (``()`` empty, ``(32,)`` one item), or string. Unbalanced or nested brackets
  are a ``ConfigError``."""
  t = text.strip()
  if t.lower() in ("true", "false"):
    return t.lower() == "true"
  for cast in (int, float):
    try:
      return cast(t)
    except ValueError:
      pass
  if t[:1] in ("(", "["):
    close = ")" if t[0] == "(" else "]"
    inner = t[1:-1]
    if not t.endswith(close) or any(b in inner for b in "()[]"):
      raise ConfigError(
        f"malformed tuple {text!r}: write a flat tuple with balanced brackets, e.g. (32,32)."
      )
    parts = [x.strip() for x in inner.split(",")]
    if parts[-1] == "":
      parts.pop()  # "(32,)" and "()"
    if any(not x for x in parts):
      raise ConfigError(f"malformed tuple {text!r}: an item is empty; write e.g. (32,32).")
    return tuple(parse_value(x) for x in parts)
  return t
