"""``validate(cfg)``: one rule per configuration key (type, finiteness, range), then the checks
that span keys (the budget against ``rho_min``, the model's and the dataset's options).

A new key gets one line in ``RULES`` (a key without a rule is refused as unknown, a rule
without its key as missing); a check across keys is a function added to ``CHECKS``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

from arsp_jax import data, names
from arsp_jax.configs.overrides import FLAG_OF, OPTION_SECTIONS
from arsp_jax.errors import ConfigError
from arsp_jax.pruning import methods as methods_lib
from arsp_jax.pruning import reservoir, scores
from arsp_jax.pruning.methods import METHODS  # dense, arsp, its ablations, the baselines, control

# The choice lists come from the registries (and reservoir.py's granularities).
SCORES = scores.SCORES.names()
GRANULARITIES = reservoir.GRANULARITIES


@dataclasses.dataclass(frozen=True)
class Rule:
  """``test(value)`` is true for an acceptable value; ``need`` says what is acceptable."""

  test: Callable[[Any], bool]
  need: str

  def problem(self, label: str, value) -> str | None:
    return None if self.test(value) else f"{label} must be {self.need}, got {value!r}."


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
  def problem(self, label: str, value) -> str | None:
    if self.test(value):
      return None
    return f"Unknown {label}={value!r}. Choose one of: {self.need}."


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int = 0, hi: int | None = None) -> Rule:
  need = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
  if hi is not None:
    need = f"an integer in [{lo}, {hi}]"
  return Rule(lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi), need)


def number(lo: float | None = None, hi: float | None = None, *, open_lo=False, open_hi=False):
  """A finite number in the interval (``open_*``: the bound itself excluded)."""

  def test(v) -> bool:
    return (
      _is_number(v)
      and (lo is None or (v > lo if open_lo else v >= lo))
      and (hi is None or (v < hi if open_hi else v <= hi))
    )

  if lo is not None and hi is not None:
    need = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
  elif lo is not None:
    need = f"a finite number {'>' if open_lo else '>='} {lo:g}"
  else:
    need = "a finite number"
  return Rule(test, need)


def text(nonempty: bool = False) -> Rule:
  return Rule(
    lambda v: isinstance(v, str) and (bool(v.strip()) or not nonempty),
    "a non-empty string" if nonempty else "a string",
  )


def choice(*options: str) -> Choice:
  return Choice(lambda v: v in options, ", ".join(options))


ANY = Rule(lambda v: True, "anything")
FLAG = Rule(lambda v: isinstance(v, bool), "true or false")
SECTION = Rule(lambda v: isinstance(v, (dict, ml_collections.ConfigDict)), "a dict of options")
POSITIVE = number(0.0, open_lo=True)
FRACTION = number(0.0, 1.0, open_hi=True)

#: Upper bounds of the integers that size memory: examples of a split, images per batch (any
#: batch: training, evaluation, calibration, reward, recovery), channels / units of a layer.
MAX_EXAMPLES = 100_000_000
MAX_BATCH = 1 << 20
MAX_WIDTH = 1 << 16
MAX_CLASSES = 100_000
#: Synthetic data is generated in memory: at most this many float32 numbers (8 GiB).
MAX_SYNTHETIC_VALUES = 1 << 31

#: Every key of base.py and what it accepts.
RULES: dict[str, Rule] = {
  "dataset": text(nonempty=True),
  "data_dir": text(),
  "val_size": integer(0, MAX_EXAMPLES),
  "input_workers": integer(-1, 256),
  "dataset_kwargs": SECTION,
  "model": text(nonempty=True),  # known names: _check_model
  "model_kwargs": SECTION,
  "method": choice(*METHODS),
  "seed": integer(0, 2**63 - 1),
  "batch_size": integer(1, MAX_BATCH),
  "eval_batch_size": integer(1, MAX_BATCH),
  "epochs": integer(0),
  "learning_rate": POSITIVE,
  "lr_schedule": choice("constant", "cosine"),
  "init_from": text(),
  "arsp.epochs": integer(0),
  "arsp.learning_rate": POSITIVE,
  "arsp.score": choice(*SCORES),
  "arsp.granularity": choice(*GRANULARITIES),
  "arsp.temperature": number(0.0),
  "arsp.temperature_anneal": FLAG,
  "arsp.channel_multiple": integer(1, MAX_WIDTH),
  "arsp.target_sparsity": Rule(
    lambda v: _is_number(v) and v < 1.0, "in [0, 1) (or negative to disable the budget)"
  ),
  "arsp.budget_fraction": number(0.0, 1.0, open_lo=True),
  "arsp.budget_mode": choice("exact", "max"),
  "arsp.prune_every": integer(1),
  "arsp.grad_ema_decay": FRACTION,
  "arsp.grad_stats": choice("auto", "weight", "layer"),
  "arsp.calib_size": integer(1, MAX_BATCH),
  "arsp.reward_size": integer(1, MAX_BATCH),
  "arsp.lambda_density": number(0.0),
  "arsp.population": integer(1, 4096),
  "arsp.search_after_budget": integer(-1, 10**6),
  "arsp.recovery_steps": integer(0),
  "arsp.recovery_batch": integer(1, MAX_BATCH),
  "arsp.recovery_lr": POSITIVE,
  "arsp.reward_metric": choice("accuracy", "loss"),
  "arsp.eval_chunk": integer(1, 4096),
  "arsp.eval_batch": integer(0, MAX_BATCH),
  "arsp.policy_std": number(0.0, 1.0, open_lo=True),
  "arsp.alloc_seed": integer(0, 2**31 - 1),
  "arsp.alloc_std": number(0.0, 5.0, open_lo=True),
  "arsp.rho_min": number(0.0, 1.0),
  "arsp.ppo_lr": POSITIVE,
  "arsp.ppo_epochs": integer(1),
  "arsp.entropy_coef": number(0.0),
  "arsp.antithetic": FLAG,
  "finetune.epochs": integer(0),
  "finetune.optimizer": choice("sgd", "adam"),
  "finetune.learning_rate": POSITIVE,
  "finetune.momentum": FRACTION,
  "hyperscore.beta0": POSITIVE,
  "hyperscore.gamma": number(),
  "hyperscore.kappa": POSITIVE,
  "log_every": integer(1),
  "keep_checkpoints": integer(1),
  "distributed": FLAG,
  "num_devices": integer(0, 65536),
  "nan_policy": choice("stop", "skip"),
  "checkpoint_every_steps": integer(0),
  "steps_per_window": integer(1, 4096),
}

_POSITIVE_INTS = Rule(
  lambda v: _flat_ints(v, 1, MAX_WIDTH) and len(v) >= 1,
  f"a flat tuple of positive integers (each at most {MAX_WIDTH}) such as (256,256)",
)

#: What a dataset option accepts (which options a dataset takes: ``data.dataset_options``).
DATASET_OPTION_RULES: dict[str, Rule] = {
  "image_shape": Rule(
    lambda v: _flat_ints(v, 1, 4096) and len(v) == 3,
    "(height, width, channels), three integers in [1, 4096]",
  ),
  "num_classes": integer(2, MAX_CLASSES),
  "num_train": integer(1, MAX_EXAMPLES),
  "num_test": integer(1, MAX_EXAMPLES),
  "image_size": integer(1, 4096),
  "test_split": text(nonempty=True),
  "image_key": text(nonempty=True),
  "label_key": text(nonempty=True),
  "num_workers": integer(0, 256),
}

#: What a model option accepts, by the type of its default in the model's class (any value for
#: other types: the model checks them) ...
MODEL_OPTION_RULES: dict[type, Rule] = {
  bool: FLAG,
  int: integer(1, MAX_WIDTH),
  float: number(0.0, 1000.0, open_lo=True),
  tuple: _POSITIVE_INTS,
  type(None): Rule(lambda v: v is None or isinstance(v, bool), "true, false or None"),
}
#: ... unless the option has a rule of its own.
NAMED_MODEL_OPTION_RULES: dict[str, Rule] = {"bn_momentum": number(0.0, 1.0)}


def _flat_ints(v, lo: int, hi: int) -> bool:
  """A flat tuple (or list) of integers in [lo, hi]."""
  return isinstance(v, (tuple, list)) and all(_is_int(x) and lo <= x <= hi for x in v)


def _tuple_rule(default) -> Rule:
  """The rule of a tuple model option: the structure of its default. A flat tuple of widths
  takes any flat tuple of widths; a tuple of k-tuples (MobileNetV2's blocks) takes tuples of
  k positive integers."""
  inner = [len(x) for x in default if isinstance(x, (tuple, list))]
  if not inner:
    return _POSITIVE_INTS
  k = inner[0]
  return Rule(
    lambda v: (
      isinstance(v, (tuple, list))
      and len(v) >= 1
      and all(
        len(x) == k and _flat_ints(x, 1, MAX_WIDTH) for x in v if isinstance(x, (tuple, list))
      )
      and all(isinstance(x, (tuple, list)) for x in v)
    ),
    f"a tuple of {k}-tuples of positive integers (the structure of its default)",
  )


def label(key: str) -> str:
  """How the user names ``key``: its short flag, else the dotted key."""
  return FLAG_OF.get(key, key)


def flatten(c) -> dict[str, Any]:
  """``{dotted key: value}`` of every field (option sections as one value each)."""
  out = {}
  for k, v in c.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)) and k not in OPTION_SECTIONS:
      out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
    else:
      out[k] = v
  return out


def _check_keys(flat: dict) -> None:
  unknown = sorted(set(flat) - set(RULES))
  if unknown:
    raise ConfigError(
      f"Unknown config key(s) {', '.join(map(repr, unknown))} (from --config.KEY, --set or the "
      f"--config file). Check the spelling; the keys are those of arsp_jax/configs/base.py."
    )
  missing = sorted(set(RULES) - set(flat))
  if missing:
    raise ConfigError(
      f"The configuration lacks the key(s) {', '.join(map(repr, missing))}. A --config file's "
      f"get_config() must start from arsp_jax/configs/base.py's get_config()."
    )


def _check_budget(c) -> None:
  ts = c.arsp.target_sparsity
  if ts >= 0 and c.arsp.rho_min > 0 and 1.0 - ts < c.arsp.rho_min:
    raise ConfigError(
      f"--target_sparsity={ts} needs keep ratios below rho_min={c.arsp.rho_min}; lower rho_min "
      f"(--set arsp.rho_min=..., or 0 to derive it from the target) or the target."
    )


def _check_dataset_options(c) -> None:
  allowed = data.dataset_options(c.dataset)
  for key, value in c.dataset_kwargs.items():
    if key not in allowed:
      raise ConfigError(
        f"Dataset {c.dataset!r} does not take the option dataset_kwargs.{key}; it accepts "
        f"{', '.join(allowed) or 'none'}."
      )
    problem = value is not None and DATASET_OPTION_RULES[key].problem(
      f"dataset_kwargs.{key}", value
    )
    if problem:
      raise ConfigError(problem)


def _check_model(c) -> None:
  # Imported here: flax and jax take 0.8 s to import (measured), which parsing flags,
  # ``--help`` and the study's planning do not need.
  from arsp_jax import models

  if c.model not in models.MODELS:
    raise ConfigError(
      f"Unknown --model={c.model!r}. Known models: {', '.join(sorted(models.MODELS))}."
    )
  fields = models.MODELS[c.model].__dataclass_fields__
  options = {k: f.default for k, f in fields.items() if k not in ("parent", "name", "num_classes")}
  for key, value in c.model_kwargs.items():
    if key not in options:
      raise ConfigError(
        f"Model {c.model!r} has no option model_kwargs.{key}; its options: "
        f"{', '.join(sorted(options))} (the number of classes comes from the dataset)."
      )
    default = options[key]
    if key in NAMED_MODEL_OPTION_RULES:
      rule = NAMED_MODEL_OPTION_RULES[key]
    elif isinstance(default, (tuple, list)):
      rule = _tuple_rule(default)
    else:
      rule = MODEL_OPTION_RULES.get(type(default), ANY)
    problem = rule.problem(f"model_kwargs.{key}", value)
    if problem:
      raise ConfigError(problem)


def _check_names(c) -> None:
  """Dataset names in one spelling (``names.canonical``): the preset lookup and the loader
  match them the same way, so another spelling is not silently another dataset."""
  if names.canonical(c.dataset) != c.dataset:
    raise ConfigError(
      f"--dataset={c.dataset!r} is not written as dataset names are: use "
      f"{names.canonical(c.dataset)!r} (lower case, '_' for '-'). Known datasets: "
      f"{', '.join(data.LOCAL_DATASETS)}, or a tensorflow-datasets name such as imagenet2012."
    )


def _check_synthetic_size(c) -> None:
  if c.dataset != "synthetic":
    return
  kw = c.dataset_kwargs
  shape = tuple(kw.get("image_shape") or (28, 28, 1))
  classes = kw.get("num_classes") or 10
  images = (kw.get("num_train") or 6000) + c.val_size + (kw.get("num_test") or 1000) + classes
  values = images * math.prod(shape)
  if values > MAX_SYNTHETIC_VALUES:
    raise ConfigError(
      f"The synthetic data asked for ({images:,} images of shape {shape}, counting "
      f"num_train, val_size, num_test and one prototype per class) would take "
      f"{4 * values / 2**30:,.0f} GiB of memory (at most {4 * MAX_SYNTHETIC_VALUES / 2**30:.0f} "
      f"GiB). Lower dataset_kwargs.num_train/num_test/num_classes, --val_size or "
      f"dataset_kwargs.image_shape."
    )


#: Input images one program holds at once (a batch, a window of batches, the calibration and
#: reward sets of a round) may take at most this many float32 numbers (32 GiB).
MAX_INPUT_VALUES = 1 << 33


def _image_values(c) -> int | None:
  """Numbers per input image when the configuration alone says (None: known from the files)."""
  kw = c.dataset_kwargs
  if c.dataset == "synthetic":
    return math.prod(tuple(kw.get("image_shape") or (28, 28, 1)))
  if c.dataset == "fashion_mnist":
    return 28 * 28
  if kw.get("image_size"):
    return kw.image_size**2 * 3
  return 32 * 32 * 3 if c.dataset == "cifar10" else None


def _check_input_memory(c) -> None:
  per_image = _image_values(c)
  if per_image is None:
    return
  a = c.arsp
  sizes = {
    "--batch_size x --steps_per_window": c.batch_size * c.steps_per_window,
    "eval_batch_size": c.eval_batch_size,
    "arsp.calib_size + arsp.reward_size": a.calib_size + a.reward_size,
  }
  name, n = max(sizes.items(), key=lambda kv: kv[1])
  if n * per_image > MAX_INPUT_VALUES:
    raise ConfigError(
      f"{name} = {n:,} images of {per_image:,} numbers each would take "
      f"{4 * n * per_image / 2**30:,.0f} GiB at once (at most "
      f"{4 * MAX_INPUT_VALUES / 2**30:.0f} GiB). Lower it or the image size."
    )


def _check_dense_start(c) -> None:
  """``--epochs=0`` trains no dense model: only with ``--init_from`` (a finished dense run)."""
  if c.epochs == 0 and not c.init_from:
    what = "trains nothing" if c.method == "dense" else "would prune an untrained network"
    raise ConfigError(
      f"--epochs=0 with --method={c.method} {what}: every method starts from a trained dense "
      f"BNN. Set --epochs to 1 or more, or --init_from=WORKDIR of a finished dense run."
    )


#: Checks across keys, run once every key has passed its rule.
CHECKS: tuple[Callable[[Any], None], ...] = (
  _check_names,
  _check_budget,
  _check_dense_start,
  _check_dataset_options,
  _check_synthetic_size,
  _check_input_memory,
  _check_model,
)

#: The pruning-phase keys a method may ignore, and which methods use them (by the method's
#: definition in pruning/methods.py).
_AGENT_KEYS = (
  "arsp.policy_std",
  "arsp.ppo_lr",
  "arsp.ppo_epochs",
  "arsp.entropy_coef",
  "arsp.antithetic",
)
_SEARCH_KEYS = (
  "arsp.population",
  "arsp.recovery_steps",
  "arsp.recovery_batch",
  "arsp.recovery_lr",
  "arsp.search_after_budget",
)


def ignored_keys(c, keys) -> list[str]:
  """Those of ``keys`` (dotted) that the configured method does not use: every pruning and
  fine-tuning key for ``dense``; the agent's settings for a method without the agent; the
  temperature for a top-k method; ``--score`` for a method with its own score; the random
  allocation's settings but for ``random_alloc``; ``--channel_multiple`` but for channel
  granularity; the budget for the unpruned control."""
  method = methods_lib.get(c.method)
  out = []
  for key in sorted(keys):
    if method is None:
      ignored = key.startswith(("arsp.", "finetune."))
    elif not method.prunes:
      ignored = key.startswith("arsp.") and key not in ("arsp.epochs", "arsp.learning_rate")
    else:
      ignored = (
        (key in _AGENT_KEYS and method.controller != "ppo")
        or (key in _SEARCH_KEYS and method.controller not in ("ppo", "random_search"))
        or (key in ("arsp.temperature", "arsp.temperature_anneal") and not method.sampled)
        or (key == "arsp.score" and method.score is not None)
        or (key in ("arsp.alloc_seed", "arsp.alloc_std") and method.controller != "random_alloc")
        or (key == "arsp.channel_multiple" and c.arsp.granularity != "channel")
      )
    if ignored:
      out.append(key)
  return out


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` naming the key, what it accepts and the value it got."""
  flat = flatten(c)
  _check_keys(flat)
  for key, rule in RULES.items():
    problem = rule.problem(label(key), flat[key])
    if problem:
      raise ConfigError(problem)
  for check in CHECKS:
    check(c)
