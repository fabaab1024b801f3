"""The one place a run's configuration is built.

Presets are modules with ``get_config()`` (``base.py`` holds every shared field; the
dataset presets change what differs), loadable by path with ``ml_collections.config_flags``
(``train.py --config=arsp_jax/configs/cifar10.py --config.arsp.population=8``) or by dataset
name with :func:`get_config`. ``apply_overrides`` / ``parse_sets`` / ``parse_value`` apply
short flags, ``--set key=value`` and study variants; ``validate`` turns every bad value into
a ``ConfigError`` whose message says how to fix it.
"""

from __future__ import annotations

import os

import ml_collections

from arsp_jax import names
from arsp_jax.configs import cifar10, fashion_mnist, imagenet, synthetic
from arsp_jax.configs.overrides import (
  FLAG_OF,
  OPTION_SECTIONS,
  SHORT_FLAGS,
  apply_overrides,
  check_path,
  parse_sets,
  parse_value,
)
from arsp_jax.configs.validation import (
  GRANULARITIES,
  RULES,
  SCORES,
  flatten,
  ignored_keys,
  label,
  validate,
)
from arsp_jax.errors import ConfigError

#: dataset -> its preset module; any other (tensorflow-datasets) name uses ``imagenet``.
PRESETS = {
  "fashion_mnist": fashion_mnist,
  "synthetic": synthetic,
  "cifar10": cifar10,
  "imagenet2012": imagenet,
}

__all__ = [
  "FLAG_OF",
  "GRANULARITIES",
  "PRESETS",
  "RULES",
  "SCORES",
  "SHORT_FLAGS",
  "ConfigError",
  "apply_overrides",
  "check_path",
  "flatten",
  "from_saved",
  "get_config",
  "ignored_keys",
  "label",
  "parse_sets",
  "parse_value",
  "preset_path",
  "validate",
]


def preset_path(dataset: str = "fashion_mnist") -> str:
  """The preset file of ``dataset`` (what ``--config=`` takes; names as ``names.canonical``
  writes them, as the loader reads them)."""
  return os.path.abspath(PRESETS.get(names.canonical(dataset), imagenet).__file__)


def get_config(dataset: str = "fashion_mnist") -> ml_collections.ConfigDict:
  """The preset for ``dataset`` (any tfds name falls back to the ImageNet-style preset); the
  name is normalised as the loader normalises it (``names.canonical``)."""
  dataset = names.canonical(dataset)
  c = PRESETS.get(dataset, imagenet).get_config()
  c.dataset = dataset
  return c


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A run's configuration from its ``config.json``: the saved values over the preset of its
  dataset, so keys added to the code since the run was written get their defaults; keys the
  code no longer has are dropped; JSON lists become the tuples they were."""
  if not isinstance(saved, dict) or not isinstance(saved.get("dataset"), str):
    raise ConfigError("config.json does not hold a train.py configuration (no dataset).")
  merged = get_config(saved["dataset"]).to_dict()
  _merge(merged, saved)
  return ml_collections.ConfigDict(merged)


def _merge(into: dict, saved: dict) -> None:
  for k, v in saved.items():
    if k not in into:
      continue
    if isinstance(into[k], dict) and k not in OPTION_SECTIONS and isinstance(v, dict):
      _merge(into[k], v)
    else:
      into[k] = _tuples(v)


def _tuples(v):
  if isinstance(v, dict):
    return {k: _tuples(x) for k, x in v.items()}
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v
