"""The presets, overrides and validate(cfg) of arsp_jax.configs."""

import ast
import json
import math
import os

import ml_collections
import pytest
from absl import flags

from arsp_jax import cli, configs
from arsp_jax.configs import base, validation
from tests.util import TINY_SETS, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET_NAMES = ("fashion_mnist", "synthetic", "cifar10", "imagenet2012", "mnist")


def presets_before():
  with open(os.path.join(HERE, "data", "presets_before.txt")) as f:
    return ast.literal_eval("".join(l for l in f if not l.startswith("#")))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_unchanged_and_valid(name):
  """Every preset is what the code gave before presets became modules, also when train.py
  builds it from its flags (no flag / only --dataset), and every preset passes validate."""
  before = presets_before()[name]
  assert configs.get_config(name).to_dict() == before
  train_argv = ["train.py"] + ([] if name == "fashion_mnist" else [f"--dataset={name}"])
  assert config_from(*train_argv[1:]).to_dict() == before
  configs.validate(configs.get_config(name))


def config_from(*argv):
  import train  # noqa: F401  (defines the flags)

  flags.FLAGS.unparse_flags()
  try:
    cli.parse_flags(["train.py", *argv])
    return cli.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()


def test_config_file_and_overrides_in_order():
  """--config file < --config.KEY < short flag < --set; --dataset picks the preset only
  without --config."""
  path = os.path.join("arsp_jax", "configs", "cifar10.py")
  c = config_from(f"--config={path}", "--config.arsp.policy_std=0.2", "--config.arsp.rho_min=0.03")
  assert (c.model, c.dataset, c.arsp.policy_std, c.arsp.rho_min) == (
    "vgg_small",
    "cifar10",
    0.2,
    0.03,
  )
  c = config_from(f"--config={path}", "--dataset=synthetic", "--config.epochs=3", "--epochs=5")
  assert (c.model, c.dataset, c.epochs) == ("vgg_small", "synthetic", 5)
  c = config_from("--dataset=synthetic", "--config.model_kwargs.hidden=(64,64)", "--epochs=5")
  assert (c.model, c.model_kwargs.hidden, c.epochs, c.val_size) == ("mlp", (64, 64), 5, 1000)
  c = config_from("--target_sparsity=0.8", "--set", "arsp.target_sparsity=0.85")
  assert c.arsp.target_sparsity == 0.85
  c = config_from("--config.arsp.policy_std=0.1", "--nan_policy=skip", "--distributed")
  assert (c.arsp.policy_std, c.nan_policy, c.distributed, c.dataset) == (
    0.1,
    "skip",
    True,
    "fashion_mnist",
  )


VALID_TEXT = {
  "model": "cnn_small",
  "method": "dense",
  "arsp.score": "taylor",
  "arsp.granularity": "channel",
  "nan_policy": "skip",
}


def test_every_short_flag_sets_its_key():
  defaults = validation.flatten(base.get_config())
  for flag, (key, _) in configs.SHORT_FLAGS.items():
    value = {bool: True, int: 3, float: 0.25, str: VALID_TEXT.get(key, "x")}[type(defaults[key])]
    assert value != defaults[key] and flags.FLAGS[flag].default is None, flag
    assert validation.flatten(config_from(f"--{flag}={value}"))[key] == value, flag


def test_tiny_sets_are_tiny_config():
  c = configs.apply_overrides(configs.get_config("synthetic"), configs.parse_sets(TINY_SETS))
  assert c.to_dict() == tiny_config().to_dict()


def test_from_saved_restores_a_run_config_and_fills_new_keys():
  cfg = tiny_config(**{"model_kwargs.hidden": (16, 8)})
  saved = json.loads(json.dumps(cfg.to_dict()))
  assert configs.from_saved(saved).to_dict() == cfg.to_dict()
  del saved["nan_policy"], saved["arsp"]["policy_std"]
  saved["removed_key"] = 1
  restored = configs.from_saved(saved)
  assert (restored.nan_policy, restored.arsp.policy_std) == ("stop", 0.5)
  configs.validate(restored)


def _bad_value(good):
  """A value of another type than ``good`` (what a typo in a config file gives)."""
  return 3 if isinstance(good, str) else "3"


def test_validate_has_a_rule_for_every_key_and_applies_it():
  flat = validation.flatten(base.get_config())
  assert set(flat) == set(configs.RULES)
  for key, good in flat.items():
    d = base.get_config().to_dict()
    node = d
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = _bad_value(good)
    with pytest.raises(configs.ConfigError) as e:
      configs.validate(ml_collections.ConfigDict(d))
    assert validation.label(key) in str(e.value), (key, str(e.value))


@pytest.mark.parametrize(
  "key, value, needle",
  [
    ("arsp.policy_std", -0.1, "(0, 1]"),
    ("arsp.policy_std", math.nan, "arsp.policy_std"),
    ("arsp.target_sparsity", math.inf, "[0, 1)"),
    ("arsp.rho_min", -0.1, "[0, 1]"),
    ("learning_rate", 0.0, "--learning_rate"),
    ("hyperscore.gamma", -math.inf, "hyperscore.gamma"),
    ("finetune.momentum", 1.0, "[0, 1)"),
    ("seed", -1, "--seed"),
    ("checkpoint_every_steps", -1, "non-negative"),
    ("nan_policy", "retry", "stop, skip"),
    ("model_kwargs.bn_momentum", 1.5, "model_kwargs.bn_momentum"),
    ("model_kwargs.hidden", (32, 0), "positive integers"),
    ("model_kwargs.num_classes", 3, "from the dataset"),
    ("dataset_kwargs.num_classes", 1, "dataset_kwargs.num_classes"),
    ("dataset_kwargs.image_size", 32, "does not take"),
  ],
)
def test_validate_ranges(key, value, needle):
  with pytest.raises(configs.ConfigError) as e:
    configs.validate(tiny_config(**{key: value}))
  assert needle in str(e.value)


@pytest.mark.parametrize(
  "overrides, needle",
  [
    ({"arsp.policy_std": "abc"}, "arsp.policy_std expects a number"),
    ({"epochs": 1.5}, "--epochs expects an integer"),
    ({"epochs": True}, "--epochs expects an integer"),
    ({"distributed": 1}, "--distributed expects true or false"),
    ({"arsp.nonsense": 1}, "Unknown config key 'arsp.nonsense'"),
    ({"nosuch.key": 1}, "Unknown config section 'nosuch'"),
  ],
)
def test_apply_overrides_refuses_wrong_types_and_unknown_keys(overrides, needle):
  with pytest.raises(configs.ConfigError) as e:
    configs.apply_overrides(tiny_config(), overrides)
  assert needle in str(e.value)
