"""The one place a run's configuration is built.

``get_config(dataset)`` returns the preset for a dataset (an
``ml_collections.ConfigDict``); ``train.py`` overrides fields from its flags
through ``apply_overrides``; ``validate`` turns every bad value into a
``ConfigError`` whose message says how to fix it.
"""

from __future__ import annotations

import math

import ml_collections

from arsp_jax.errors import ConfigError
from arsp_jax.pruning.methods import METHODS  # dense, arsp, its ablations, the baselines, control

SCORES = ("magnitude", "taylor", "seed")
GRANULARITIES = ("weight", "channel")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist"
  c.data_dir = ""
  c.val_size = 5000
  c.dataset_kwargs = ml_collections.ConfigDict()
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  c.method = "arsp"
  c.seed = 0
  c.batch_size = 256
  c.eval_batch_size = 1000

  # Dense phase: BinaryConnect training of latent weights.
  c.epochs = 10
  c.learning_rate = 1e-3
  c.lr_schedule = "cosine"  # constant | cosine (dense and fine-tuning phases)
  c.init_from = ""  # workdir of a finished dense run to start from

  # ARSP phase (masked training while the agent sets reservoir sizes).
  c.arsp = ml_collections.ConfigDict()
  c.arsp.epochs = 4
  c.arsp.learning_rate = 1e-4  # measured: 1e-3 after a cosine-annealed dense phase lost 0.9 points
  c.arsp.score = "magnitude"
  c.arsp.granularity = "weight"
  c.arsp.temperature = 1.0  # A-Res on score**(1/T); 0 = deterministic top-k
  c.arsp.temperature_anneal = True  # T falls linearly to 0 over the budget rounds
  c.arsp.channel_multiple = 1
  c.arsp.target_sparsity = 0.9  # budget mode; a value < 0 turns the budget off
  c.arsp.budget_fraction = 0.5  # fraction of the rounds over which the budget tightens (cubic)
  c.arsp.budget_mode = "exact"  # exact: density = budget (the agent shares it among layers);
  # max: the budget is a ceiling (the agent may prune more)
  c.arsp.prune_every = 50  # training steps between pruning rounds
  c.arsp.grad_ema_decay = 0.9
  c.arsp.grad_stats = "auto"  # weight | layer | auto (per weight only when the score uses it)
  c.arsp.calib_size = 500  # training images used to re-estimate batchnorm stats
  c.arsp.reward_size = 1000  # validation images used for the reward
  c.arsp.lambda_density = 0.1  # reward = metric - lambda * density (budget off only)
  c.arsp.rho_min = 0.02
  # The agent: a population of candidate allocations per round, each scored after a short
  # recovery (recovery_steps SGD steps of recovery_batch calibration images) on the reward set.
  c.arsp.population = 16
  c.arsp.recovery_steps = 20
  c.arsp.recovery_batch = 64
  c.arsp.recovery_lr = 0.01
  c.arsp.reward_metric = "accuracy"  # accuracy | loss
  c.arsp.eval_chunk = 16  # candidates scored at once (memory grows with it)
  c.arsp.policy_std = 0.5  # initial exploration sigma of the log keep-ratio offsets
  c.arsp.ppo_lr = 3e-2
  c.arsp.ppo_epochs = 8
  c.arsp.entropy_coef = 0.0

  # Fine-tuning with frozen masks.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.epochs = 10
  c.finetune.optimizer = "sgd"  # sgd (momentum) | adam
  c.finetune.learning_rate = 0.01
  c.finetune.momentum = 0.9

  c.hyperscore = ml_collections.ConfigDict()
  c.hyperscore.beta0 = 5.0
  c.hyperscore.gamma = -math.log(2.0)
  c.hyperscore.kappa = 2.0

  c.log_every = 50
  c.keep_checkpoints = 2
  c.distributed = False
  c.num_devices = 0  # 0 = all devices; n = the first n local devices (tests, debugging)
  # Reliability (checked in loop.run): what a non-finite loss/gradient does (stop | skip the
  # step), and a mid-epoch checkpoint every n global steps (0 = only at epoch ends).
  c.nan_policy = "stop"
  c.checkpoint_every_steps = 0
  return c


def _fashion_mnist(c):
  c.model = "mlp"
  return c


def _synthetic(c):
  c.model = "mlp"
  c.val_size = 1000
  c.dataset_kwargs = ml_collections.ConfigDict(
    {"image_shape": (28, 28, 1), "num_classes": 10, "num_train": 6000, "num_test": 1000}
  )
  c.model_kwargs = ml_collections.ConfigDict({"hidden": (256, 256)})
  c.epochs = 3
  c.arsp.epochs = 2
  c.finetune.epochs = 2
  c.arsp.calib_size = 500
  c.arsp.reward_size = 1000
  c.arsp.prune_every = 10
  return c


def _cifar10(c):
  c.model = "vgg_small"
  c.batch_size = 128
  c.epochs = 100
  c.lr_schedule = "cosine"
  c.arsp.epochs = 20
  c.arsp.prune_every = 100
  c.finetune.epochs = 20
  return c


def _imagenet(c):
  c.model = "resnet18"
  c.batch_size = 256
  c.eval_batch_size = 256
  c.val_size = 10000
  c.epochs = 90
  c.lr_schedule = "cosine"
  c.arsp.epochs = 10
  c.arsp.prune_every = 500
  c.arsp.calib_size = 2048
  c.arsp.reward_size = 4096
  c.arsp.granularity = "channel"
  c.arsp.channel_multiple = 8
  c.finetune.epochs = 10
  c.dataset_kwargs = ml_collections.ConfigDict({"image_size": 224})
  return c


PRESETS = {
  "fashion_mnist": _fashion_mnist,
  "synthetic": _synthetic,
  "cifar10": _cifar10,
  "imagenet2012": _imagenet,
}


def get_config(dataset: str = "fashion_mnist") -> ml_collections.ConfigDict:
  """The preset for ``dataset`` (any tfds name falls back to the ImageNet-style preset)."""
  c = base_config()
  c.dataset = dataset
  return PRESETS.get(dataset, _imagenet)(c)


def apply_overrides(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys (``'arsp.score'``) from ``overrides`` (values already typed)."""
  c = ml_collections.ConfigDict(c.to_dict())
  if "model" in overrides and overrides["model"] != c.model:
    # The preset's model options belong to the preset's model (e.g. an MLP's hidden sizes).
    c.model_kwargs = ml_collections.ConfigDict()
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in node:
        raise ConfigError(f"Unknown config section {p!r} in {key!r}.")
      node = node[p]
    if leaf not in node and not (parents and parents[0] in ("model_kwargs", "dataset_kwargs")):
      raise ConfigError(f"Unknown config key {key!r}.")
    node[leaf] = value
  return c


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


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` with a fix for every out-of-range value."""
  if c.method not in METHODS:
    raise ConfigError(f"Unknown --method={c.method!r}. Choose one of: {', '.join(METHODS)}.")
  if c.arsp.score not in SCORES:
    raise ConfigError(f"Unknown --score={c.arsp.score!r}. Choose one of: {', '.join(SCORES)}.")
  if c.arsp.granularity not in GRANULARITIES:
    raise ConfigError(
      f"Unknown --granularity={c.arsp.granularity!r}. Choose one of: {', '.join(GRANULARITIES)}."
    )
  for name, v in (
    ("--epochs", c.epochs),
    ("--prune_epochs", c.arsp.epochs),
    ("--finetune_epochs", c.finetune.epochs),
  ):
    if not isinstance(v, int) or v < 0:
      raise ConfigError(f"{name} must be a non-negative integer, got {v!r}.")
  if c.batch_size <= 0:
    raise ConfigError(f"--batch_size must be positive, got {c.batch_size}.")
  ts = c.arsp.target_sparsity
  if ts is not None and ts >= 0 and not (0.0 <= ts < 1.0):
    raise ConfigError(
      f"--target_sparsity must be in [0, 1) (or negative to disable the budget), got {ts}."
    )
  if not (0.0 < c.arsp.rho_min <= 1.0):
    raise ConfigError(f"arsp.rho_min must be in (0, 1], got {c.arsp.rho_min}.")
  if ts is not None and ts >= 0 and 1.0 - ts < c.arsp.rho_min:
    raise ConfigError(
      f"--target_sparsity={ts} needs keep ratios below rho_min="
      f"{c.arsp.rho_min}; lower rho_min (--set arsp.rho_min=...) or the target."
    )
  if c.arsp.prune_every <= 0:
    raise ConfigError("--prune_every must be positive.")
  if c.arsp.population < 1 or c.arsp.recovery_steps < 0 or c.arsp.recovery_batch < 1:
    raise ConfigError(
      "arsp.population and arsp.recovery_batch must be >= 1 and arsp.recovery_steps >= 0."
    )
  if c.arsp.reward_metric not in ("accuracy", "loss"):
    raise ConfigError(f"arsp.reward_metric must be accuracy or loss, got {c.arsp.reward_metric!r}.")
  if c.arsp.temperature < 0:
    raise ConfigError(f"arsp.temperature must be >= 0, got {c.arsp.temperature}.")
  if c.num_devices < 0:
    raise ConfigError(f"num_devices must be >= 0 (0 = all), got {c.num_devices}.")
  if c.arsp.grad_stats not in ("auto", "weight", "layer"):
    raise ConfigError(f"arsp.grad_stats must be auto, weight or layer, got {c.arsp.grad_stats!r}.")
  if c.finetune.optimizer not in ("sgd", "adam"):
    raise ConfigError(f"finetune.optimizer must be 'sgd' or 'adam', got {c.finetune.optimizer!r}.")
  if c.arsp.budget_mode not in ("exact", "max"):
    raise ConfigError(f"arsp.budget_mode must be 'exact' or 'max', got {c.arsp.budget_mode!r}.")
  if c.lr_schedule not in ("constant", "cosine"):
    raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', got {c.lr_schedule!r}.")
