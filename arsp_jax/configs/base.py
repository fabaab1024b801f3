"""The fields every preset shares, with their defaults (the Fashion-MNIST MLP run).

A preset (``fashion_mnist.py``, ``cifar10.py``, ...) starts from :func:`get_config` and
changes what differs; ``arsp_jax.configs.validate`` knows a rule for every key set here.
"""

import math

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist"
  c.data_dir = ""
  c.val_size = 5000
  c.dataset_kwargs = ml_collections.ConfigDict()
  # grain worker processes decoding training batches of tensorflow-datasets datasets ahead of
  # the step (-1: one per core, at most 8; 0: grain's pipeline in the training process). The
  # in-memory datasets (fashion_mnist, cifar10, synthetic) never need them.
  c.input_workers = -1
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

  # ARSP phase (masked training while the agent sets reservoir sizes): arsp_config below.
  c.arsp = arsp_config()

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
  # Reliability: what a non-finite loss/gradient does (stop | skip the step), and a
  # mid-epoch checkpoint every n global steps (0 = only at epoch ends).
  c.nan_policy = "stop"
  c.checkpoint_every_steps = 0
  # Training steps compiled into one program (a lax.scan over a window of stacked batches; the
  # pruning round, when due, runs at the start of its window). 1: one program call per step.
  c.steps_per_window = 1
  return c


def arsp_config() -> ml_collections.ConfigDict:
  """The pruning phase's fields (``c.arsp``): the masked training while the rounds set the
  reservoir sizes, the rounds' budget, sampling, reward and the agent."""
  # ARSP phase (masked training while the agent sets reservoir sizes).
  a = ml_collections.ConfigDict()
  a.epochs = 4
  a.learning_rate = 1e-4  # measured: 1e-3 after a cosine-annealed dense phase lost 0.9 points
  a.score = "magnitude"
  a.granularity = "weight"
  a.temperature = 1.0  # A-Res on score**(1/T); 0 = deterministic top-k
  a.temperature_anneal = True  # T falls linearly to 0 over the budget rounds
  a.channel_multiple = 1
  a.target_sparsity = 0.9  # budget mode; a value < 0 turns the budget off
  a.budget_fraction = 0.5  # fraction of the rounds over which the budget tightens (cubic)
  a.budget_mode = "exact"  # exact: density = budget (the agent shares it among layers);
  # max: the budget is a ceiling (the agent may prune more)
  a.prune_every = 50  # training steps between pruning rounds
  a.grad_ema_decay = 0.9
  a.grad_stats = "auto"  # weight | layer | auto (per weight only when the score uses it)
  a.calib_size = 500  # training images used to re-estimate batchnorm stats
  # validation images used for the reward: 2,000 of the 5,000 (the other 3,000 are held out:
  # bench/reward.py validates the reward against fine-tuned accuracy on them)
  a.reward_size = 2000
  a.lambda_density = 0.1  # reward = metric - lambda * density (budget off only)
  # smallest keep ratio of a layer; 0 = derived from the target: min(0.02, 0.4 * (1 - target)),
  # so 0.9 and 0.95 keep the old 0.02 and the frontier (0.98-0.999) needs no hand tuning
  a.rho_min = 0.0
  # The agent: a population of candidate allocations per round, each scored after a short
  # recovery (recovery_steps SGD steps of recovery_batch calibration images) on the reward set.
  a.population = 8
  a.recovery_steps = 10
  a.recovery_batch = 64
  a.recovery_lr = 0.01
  # accuracy | loss (minus the cross-entropy): against held-out validation accuracy after
  # fine-tuning (bench/reward.py) minus the loss ranked allocations better than accuracy in all
  # four variants measured (deep MLP, 0.9 with K = 10/20/50, 0.98), though neither met the bar
  a.reward_metric = "loss"
  a.eval_chunk = 8  # candidates scored at once (memory grows with it)
  # The agent (and random search) score candidates while the budget tightens and for this many
  # rounds after; later rounds redraw the masks for its allocation at a rule's cost (-1: every
  # round scores candidates)
  a.search_after_budget = 2
  a.eval_batch = 0  # images per forward pass in a round (0: the whole calibration/reward set)
  a.policy_std = 0.5  # initial exploration sigma of the log keep-ratio offsets
  a.ppo_lr = 1e-2  # tuned on the known-optimum tasks (tests/test_agent.py, bench/agent_learning.py)
  a.ppo_epochs = 16
  a.entropy_coef = 0.0
  a.antithetic = False  # the agent's candidates in mirrored pairs (bench/agent_learning.py)
  # The headroom probe (--method=random_alloc): one fixed random allocation per alloc_seed,
  # log keep-ratio offsets drawn from N(0, alloc_std^2) and mapped onto each round's budget.
  a.alloc_seed = 0
  a.alloc_std = 1.0
  return a
