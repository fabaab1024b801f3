"""Train state and the compiled SPMD training steps.

One ``TrainState`` pytree carries everything a run needs to continue:
parameters, batchnorm statistics, connection masks, optimizer state, RNG, the
running mean of |dL/dw| for every prunable kernel, the layers' keep ratios, and
the PPO agent (parameters, optimizer state, rollout buffer).

Steps are pure ``(state, batch[, aux]) -> (state, metrics)`` functions compiled
once with ``jax.jit`` over a ``('data',)`` device mesh: the batch is sharded
along its leading axis, the state is replicated.  This is the SPMD form of
``pmap``: XLA inserts the cross-device reductions, so the loss (hence the
gradient), the batchnorm batch statistics and the reward accuracy are means over
the *global* batch and the replicated agent stays identical on every device.

Two training steps (each compiled with the optimizer of its phase):

* ``train``    — BinaryConnect: STE gradients, latent weights clipped, masks fixed; the dense
  phase (Adam) and the fine-tuning phase (SGD+momentum by default, frozen masks) use it.
* ``arsp``     — the dense update with masks + gradient statistics, and every
  ``prune_every`` steps (``lax.cond``) one pruning round: re-estimate batchnorm
  statistics under the current masks, evaluate the reward batch, record the
  transition, PPO-update the agent when its buffer is full, let it act on the
  keep ratios (budget-projected), and redraw every layer's reservoir mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from arsp_jax.models import binary
from arsp_jax.pruning import ppo, reservoir, scores

Array = jax.Array
SEP = "/"


class TrainState(flax.struct.PyTreeNode):
  step: Array  # int32, steps taken in the current phase
  params: Any
  batch_stats: Any
  masks: Any  # {'layer': {'kernel': 0/1 float32}} for every prunable kernel
  opt_state: Any
  rng: Array
  grad_ema: Any  # flat dict path -> running mean of |dL/dw| (ARSP phase), else {};
  # per weight, or per layer (a scalar: mean |dL/dw|) when the score
  # does not use gradients (RoundConfig.per_weight_grads)
  keep_ratios: Array  # [L] float32
  agent: Any  # ppo.AgentState in the ARSP phase, else {}
  prune: Any  # round bookkeeping (dict of arrays), else {}


# ----------------------------------------------------------------------------
# Layer bookkeeping
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """Static description of the prunable layers, in a fixed order.

  ``paths`` are ``'layer/kernel'`` strings (sorted), ``sizes`` their connection
  counts, ``shapes`` their kernel shapes.
  """

  paths: tuple
  shapes: tuple
  sizes: tuple

  @property
  def num_layers(self) -> int:
    return len(self.paths)

  @property
  def total(self) -> int:
    return int(sum(self.sizes))

  @staticmethod
  def from_masks(masks) -> LayerInfo:
    flat = flatten(masks)
    paths = tuple(sorted(flat))
    return LayerInfo(
      paths=paths,
      shapes=tuple(tuple(flat[p].shape) for p in paths),
      sizes=tuple(int(np.prod(flat[p].shape)) for p in paths),
    )


def flatten(tree) -> dict:
  if not tree:
    return {}
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep=SEP)


def unflatten(flat: dict) -> dict:
  return traverse_util.unflatten_dict(flat, sep=SEP)


def prunable_kernels(params, info: LayerInfo) -> dict:
  flat = flatten(params)
  return {p: flat[p] for p in info.paths}


def clip_binary_kernels(params, info: LayerInfo, clip: float = 1.0):
  """BinaryConnect: clip the latent binary kernels to [-clip, clip] after each update."""
  flat = flatten(params)
  for p in info.paths:
    flat[p] = binary.clip_latent(flat[p], clip)
  return unflatten(flat)


def apply_masks_to_params(params, masks, info: LayerInfo):
  """Zeros the latent weights of pruned connections (frozen masks: they never come back)."""
  flat, fm = flatten(params), flatten(masks)
  for p in info.paths:
    flat[p] = flat[p] * fm[p]
  return unflatten(flat)


def layer_density(masks, info: LayerInfo) -> Array:
  """[L] retained fraction of each prunable layer."""
  fm = flatten(masks)
  return jnp.stack([jnp.mean(fm[p]) for p in info.paths]) if info.paths else jnp.zeros((0,))


def overall_density(masks, info: LayerInfo) -> Array:
  fm = flatten(masks)
  if not info.paths:
    return jnp.asarray(1.0)
  return sum(jnp.sum(fm[p]) for p in info.paths) / float(info.total)


# ----------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------


def make_optimizer(
  kind: str, learning_rate: Any, *, momentum: float = 0.9
) -> optax.GradientTransformation:
  """Adam or SGD with momentum; ``learning_rate`` is a float or an optax schedule."""
  if kind == "adam":
    return optax.adam(learning_rate)
  if kind == "sgd":
    return optax.sgd(learning_rate, momentum=momentum)
  raise ValueError(f"Unknown optimizer {kind!r}")


# ----------------------------------------------------------------------------
# Pruning-round configuration
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RoundConfig:
  """Static settings of the ARSP phase (hashable)."""

  score: str = "magnitude"
  granularity: str = "weight"
  temperature: float = 0.0
  channel_multiple: int = 1
  prune_every: int = 25
  grad_ema_decay: float = 0.9
  per_weight_grads: bool = True  # False: only each layer's mean |dL/dw| (agent observation)
  target_density: float = -1.0  # < 0: no budget
  budget_rounds: int = 1  # rounds over which the budget tightens to target
  total_rounds: int = 1
  controller: str = "ppo"  # ppo | uniform | global | random_search | none (methods.py)
  oneshot: bool = False  # masks set by the first round only, then frozen
  exact_budget: bool = True  # ratios meet the budget exactly (False: it is only a ceiling)
  ppo: ppo.PPOConfig = ppo.PPOConfig()


def budget_density(round_idx: Array, rc: RoundConfig) -> Array:
  """Cubic (Zhu & Gupta) schedule of the maximum density at round ``round_idx``."""
  frac = jnp.minimum(1.0, (round_idx + 1.0) / max(rc.budget_rounds, 1))
  return rc.target_density + (1.0 - rc.target_density) * (1.0 - frac) ** 3


# ----------------------------------------------------------------------------
# State construction
# ----------------------------------------------------------------------------


def create_state(variables: dict, tx: optax.GradientTransformation, rng: Array) -> TrainState:
  params = variables["params"]
  masks = variables.get("masks", {})
  info = LayerInfo.from_masks(masks)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    masks=masks,
    opt_state=tx.init(params),
    rng=rng,
    grad_ema={},
    keep_ratios=jnp.ones((info.num_layers,), jnp.float32),
    agent={},
    prune={},
  )


def start_phase(
  state: TrainState,
  phase: str,
  tx: optax.GradientTransformation,
  info: LayerInfo,
  rc: RoundConfig | None = None,
) -> TrainState:
  """Re-initialises phase-specific parts of the state (optimizer, agent, statistics)."""
  params = state.params
  grad_ema, agent, prune = {}, {}, {}
  if phase == "arsp":
    assert rc is not None
    grad_ema = {
      p: jnp.zeros(s if rc.per_weight_grads else (), jnp.float32)
      for p, s in zip(info.paths, info.shapes)
    }
    rng, sub = jax.random.split(state.rng)
    agent = ppo.init_agent(sub, info.num_layers, rc.ppo)
    prune = {
      "round": jnp.zeros((), jnp.int32),
      "has_prev": jnp.zeros((), jnp.bool_),
      "obs": jnp.zeros((info.num_layers, ppo.OBS_DIM), jnp.float32),
      "actions": jnp.zeros((info.num_layers,), jnp.int32),
      "logp": jnp.zeros((info.num_layers,), jnp.float32),
      "values": jnp.zeros((info.num_layers,), jnp.float32),
      # random-search controller: the best keep ratios so far and their reward
      "best_ratios": jnp.ones((info.num_layers,), jnp.float32),
      "best_reward": jnp.full((), -jnp.inf, jnp.float32),
    }
    state = state.replace(rng=rng)
  if phase == "finetune":
    params = apply_masks_to_params(params, state.masks, info)
  return state.replace(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    grad_ema=grad_ema,
    agent=agent,
    prune=prune,
  )


# ----------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------


def cross_entropy(logits: Array, labels: Array) -> Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_loss_fn(model: nn.Module):
  def loss_fn(params, batch_stats, masks, images, labels):
    variables = {"params": params, "batch_stats": batch_stats, "masks": masks}
    logits, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, labels))
    return loss, (logits, new_vars["batch_stats"])

  return loss_fn


def _update(
  model,
  tx,
  info,
  state: TrainState,
  batch,
  *,
  track_grads: bool,
  decay: float,
  per_weight: bool = True,
  skip_nonfinite: bool = False,
):
  """One optimizer step. ``skip_nonfinite``: a step whose loss or gradient is not finite keeps
  the input state (parameters, optimizer state, batchnorm and gradient statistics; only the step
  counter advances), so no NaN reaches the weights (``nan_policy=skip``)."""
  loss_fn = make_loss_fn(model)
  (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, state.batch_stats, state.masks, batch["image"], batch["label"]
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params = clip_binary_kernels(params, info)
  grad_ema = state.grad_ema
  if track_grads:
    fg = flatten(grads)
    reduce = (lambda g: g) if per_weight else jnp.mean
    grad_ema = {p: decay * grad_ema[p] + (1.0 - decay) * reduce(jnp.abs(fg[p])) for p in info.paths}
  acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
  gnorm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
  new = state.replace(
    step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state, grad_ema=grad_ema
  )
  if skip_nonfinite:
    kept = state.replace(step=state.step + 1)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, kept)
  metrics = {"loss": loss, "accuracy": acc, "grad_norm": gnorm, "finite": finite}
  return new, metrics


def recalibrate_batch_stats(model: nn.Module, params, masks, batch_stats, images: Array):
  """Exact batchnorm statistics of ``images`` under ``masks`` (one train-mode pass, momentum 0)."""
  if not batch_stats:
    return batch_stats
  recal = model.clone(bn_momentum=0.0)
  _, new_vars = recal.apply(
    {"params": params, "batch_stats": batch_stats, "masks": masks},
    images,
    train=True,
    mutable=["batch_stats"],
  )
  return new_vars["batch_stats"]


def accuracy_on(model, params, batch_stats, masks, images, labels) -> Array:
  logits = model.apply(
    {"params": params, "batch_stats": batch_stats, "masks": masks}, images, train=False
  )
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def _layer_scores(rng, params, grad_ema, info: LayerInfo, rc: RoundConfig) -> dict:
  kernels = prunable_kernels(params, info)
  if rc.score == "random":
    # Uniform scores from the run's RNG: a random mask of exactly k connections.
    return {
      p: jax.random.uniform(jax.random.fold_in(rng, 1000 + i), kernels[p].shape)
      for i, p in enumerate(info.paths)
    }
  grads = None
  if rc.score != "magnitude":
    grads = {p: jnp.broadcast_to(grad_ema[p], kernels[p].shape) for p in info.paths}
  return scores.layer_scores(rc.score, kernels, grads)


def compute_masks(rng, params, grad_ema, keep_ratios, info: LayerInfo, rc: RoundConfig):
  """Every layer's reservoir mask for the given keep ratios (traced)."""
  sc = _layer_scores(rng, params, grad_ema, info, rc)
  ratios = {p: keep_ratios[i] for i, p in enumerate(info.paths)}
  flat = reservoir.reservoir_masks(
    rng,
    sc,
    ratios,
    temperature=rc.temperature,
    granularity=rc.granularity,
    channel_multiple=rc.channel_multiple,
  )
  return unflatten({p: flat[p].astype(jnp.float32) for p in info.paths})


def global_masks(rng, params, grad_ema, density: Array, info: LayerInfo, rc: RoundConfig):
  """One threshold over all prunable layers: the ``round(density * N)`` connections with the
  largest scores, each layer's scores divided by their mean first (as jaxpruner normalises
  global pruning), so layers with larger weights do not win by scale alone."""
  sc = _layer_scores(rng, params, grad_ema, info, rc)
  flat = jnp.concatenate([(sc[p] / (jnp.mean(sc[p]) + 1e-12)).reshape(-1) for p in info.paths])
  k = jnp.round(jnp.clip(density, 0.0, 1.0) * jnp.float32(info.total)).astype(jnp.int32)
  keep = reservoir.topk_mask(flat, k)
  out, start = {}, 0
  for p, shape, n in zip(info.paths, info.shapes, info.sizes):
    out[p] = keep[start : start + n].reshape(shape)
    start += n
  return unflatten(out)


def layer_observations(state: TrainState, info: LayerInfo, rc: RoundConfig) -> Array:
  kernels = prunable_kernels(state.params, info)
  mean_w = jnp.stack([jnp.mean(jnp.abs(kernels[p])) for p in info.paths])
  mean_g = jnp.stack([jnp.mean(state.grad_ema[p]) for p in info.paths])
  round_frac = state.prune["round"].astype(jnp.float32) / max(rc.total_rounds, 1)
  return ppo.layer_observations(
    mean_w, mean_g, state.keep_ratios, round_frac, layer_sizes=jnp.asarray(info.sizes, jnp.float32)
  )


def pruning_round(model, info: LayerInfo, rc: RoundConfig, state: TrainState, aux):
  """One pruning round (see module docstring). Returns (state, round metrics).

  ``rc.controller`` says who sets the keep ratios (``methods.py``): the PPO agent (ARSP),
  every layer at the schedule's density (``uniform``), one global threshold (``global``), or
  a random search over keep-ratio vectors (``random_search``).
  """
  pc = rc.ppo
  rng, r_act, r_mask = jax.random.split(state.rng, 3)
  # 1. Reward of the previous action: accuracy after training under its masks,
  #    with batchnorm statistics re-estimated for those masks.
  bs = recalibrate_batch_stats(model, state.params, state.masks, state.batch_stats, aux["calib"])
  acc = accuracy_on(model, state.params, bs, state.masks, aux["val_image"], aux["val_label"])
  density = overall_density(state.masks, info)
  rew = ppo.reward(acc, density, pc)
  obs = layer_observations(state, info, rc)
  prev = state.prune
  agent = state.agent
  zero = jnp.zeros((), jnp.float32)
  ppo_metrics = {"policy_loss": zero, "value_loss": zero, "entropy": zero, "approx_kl": zero}
  actions, logp, values = prev["actions"], prev["logp"], prev["values"]
  best_ratios, best_reward = prev["best_ratios"], prev["best_reward"]
  sizes = jnp.asarray(info.sizes, jnp.float32)
  budget = budget_density(prune_round_f(state), rc) if rc.target_density >= 0 else None
  # Rounding k = round(rho * n) may add up to 0.5 connection per layer: leave room when the
  # ratios are projected onto the budget.
  slack = 0.5 * info.num_layers / float(info.total)

  if rc.controller == "ppo":
    agent = jax.lax.cond(
      prev["has_prev"],
      lambda a: ppo.record(a, prev["obs"], prev["actions"], prev["logp"], prev["values"], rew),
      lambda a: a,
      state.agent,
    )

    def do_update(a):
      a, m = ppo.ppo_update(a, obs, pc)
      return a, {k: jnp.asarray(m[k], jnp.float32) for k in ppo_metrics}

    agent, ppo_metrics = jax.lax.cond(
      ppo.ready(agent, pc), do_update, lambda a: (a, ppo_metrics), agent
    )
    # 2. Act: change keep ratios, project onto the budget, redraw the reservoirs.
    actions, logp, values = ppo.act(agent.params, obs, r_act, pc)
    ratios = ppo.apply_actions(state.keep_ratios, actions, pc)
    if budget is not None:
      ratios = _to_budget(ratios, sizes, budget - slack, pc.rho_min, rc)
  elif rc.controller == "random_search":
    # (1+1) random search, one evaluation per round (the agent's count). While the budget
    # still tightens every candidate is accepted (rewards at different densities do not
    # compare); once it is reached, the best ratios so far are kept and perturbed.
    settled = prune_round_f(state) > rc.budget_rounds
    better = (rew > best_reward) | ~settled | ~prev["has_prev"]
    best_ratios = jnp.where(better, state.keep_ratios, best_ratios)
    best_reward = jnp.where(better, rew, best_reward)
    noise = pc.delta * jax.random.normal(r_act, (info.num_layers,))
    ratios = jnp.clip(best_ratios + noise, pc.rho_min, 1.0)
    if budget is not None:
      ratios = _to_budget(ratios, sizes, budget - slack, pc.rho_min, rc)
  elif rc.controller in ("uniform", "global", "none"):
    level = jnp.asarray(1.0 if (budget is None or rc.controller == "none") else budget, jnp.float32)
    ratios = jnp.full((info.num_layers,), level, jnp.float32)
  else:
    raise ValueError(f"unknown controller {rc.controller!r}")

  def new_masks(ratios):
    if rc.controller == "global":
      masks = global_masks(r_mask, state.params, state.grad_ema, ratios[0], info, rc)
      return masks, layer_density(masks, info)
    return compute_masks(r_mask, state.params, state.grad_ema, ratios, info, rc), ratios

  if rc.controller == "none":
    masks = state.masks  # the control keeps every connection it started with
  elif rc.oneshot:
    # Only the first round prunes; later rounds keep the masks (and ratios) it chose, and do
    # not compute new ones.
    masks, ratios = jax.lax.cond(
      prev["round"] == 0, new_masks, lambda r: (state.masks, state.keep_ratios), ratios
    )
  else:
    masks, ratios = new_masks(ratios)
  prune = {
    "round": prev["round"] + 1,
    "has_prev": jnp.ones((), jnp.bool_),
    "obs": obs,
    "actions": actions,
    "logp": logp,
    "values": values,
    "best_ratios": best_ratios,
    "best_reward": best_reward,
  }
  state = state.replace(
    rng=rng, masks=masks, keep_ratios=ratios, batch_stats=bs, agent=agent, prune=prune
  )
  metrics = {
    "round_reward": rew,
    "round_accuracy": acc,
    "round_density": density,
    "new_density": overall_density(masks, info),
    "keep_ratios": ratios,
    "layer_density": layer_density(masks, info),
    "did_round": jnp.ones((), jnp.bool_),
    "ppo_updated": agent.updates,
    **{"ppo_" + k: v for k, v in ppo_metrics.items()},
  }
  return state, metrics


def _to_budget(ratios, sizes, density, rho_min, rc: RoundConfig):
  if rc.exact_budget:
    return ppo.fit_to_budget(ratios, sizes, density, rho_min)
  return ppo.project_to_budget(ratios, sizes, density, rho_min)


def prune_round_f(state: TrainState) -> Array:
  return state.prune["round"].astype(jnp.float32)


def _no_round_metrics(info: LayerInfo, state: TrainState):
  zero = jnp.zeros((), jnp.float32)
  return {
    "round_reward": zero,
    "round_accuracy": zero,
    "round_density": zero,
    "new_density": zero,
    "keep_ratios": state.keep_ratios,
    "layer_density": jnp.zeros((info.num_layers,), jnp.float32),
    "did_round": jnp.zeros((), jnp.bool_),
    "ppo_updated": state.agent.updates,
    "ppo_policy_loss": zero,
    "ppo_value_loss": zero,
    "ppo_entropy": zero,
    "ppo_approx_kl": zero,
  }


def make_step_fns(
  model: nn.Module,
  tx: optax.GradientTransformation,
  info: LayerInfo,
  rc: RoundConfig | None = None,
  *,
  skip_nonfinite: bool = False,
) -> dict:
  """Uncompiled pure step functions of the three phases (``skip_nonfinite``: see ``_update``)."""

  def train_step(state, batch):
    """The dense and fine-tuning phases: masks fixed, no statistics."""
    return _update(
      model, tx, info, state, batch, track_grads=False, decay=0.0, skip_nonfinite=skip_nonfinite
    )

  def arsp_step(state, batch, aux):
    # The round due after every `prune_every` updates runs at the start of the next step, on
    # the step's input state: XLA then reads the (donated) parameters in the round before the
    # update overwrites them, with no copies (a round placed after the update made XLA copy the
    # new parameters and masks on every step).
    do_round = (state.step > 0) & ((state.step % rc.prune_every) == 0)
    # Only what a round changes goes through the cond; parameters and gradient statistics are
    # read-only operands and the optimizer state stays outside, so steps without a round do not
    # copy the large buffers (measured: passing the whole state cost ~40% per step on a CPU).
    read_only = (state.params, state.grad_ema)
    changed = (
      state.masks,
      state.keep_ratios,
      state.batch_stats,
      state.agent,
      state.prune,
      state.rng,
    )

    def view(read_only, changed):
      masks, ratios, bs, agent, prune, rng = changed
      return TrainState(
        step=None,
        params=read_only[0],
        batch_stats=bs,
        masks=masks,
        opt_state=None,
        rng=rng,
        grad_ema=read_only[1],
        keep_ratios=ratios,
        agent=agent,
        prune=prune,
      )

    def with_round(read_only, changed, aux):
      s, m = pruning_round(model, info, rc, view(read_only, changed), aux)
      return (s.masks, s.keep_ratios, s.batch_stats, s.agent, s.prune, s.rng), m

    def without_round(read_only, changed, aux):
      return changed, _no_round_metrics(info, view(read_only, changed))

    changed, rm = jax.lax.cond(do_round, with_round, without_round, read_only, changed, aux)
    masks, ratios, bs, agent, prune, rng = changed
    state = state.replace(
      masks=masks, keep_ratios=ratios, batch_stats=bs, agent=agent, prune=prune, rng=rng
    )
    state, metrics = _update(
      model,
      tx,
      info,
      state,
      batch,
      track_grads=True,
      decay=rc.grad_ema_decay,
      per_weight=rc.per_weight_grads,
      skip_nonfinite=skip_nonfinite,
    )
    return state, {**metrics, **rm}

  def eval_step(state, batch):
    logits = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats, "masks": state.masks},
      batch["image"],
      train=False,
    )
    w = batch["weight"]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * w
    loss = cross_entropy(logits, batch["label"]) * w
    return {"correct": jnp.sum(correct), "loss": jnp.sum(loss), "count": jnp.sum(w)}

  return {"train": train_step, "arsp": arsp_step, "eval": eval_step}


# ----------------------------------------------------------------------------
# Mesh and compilation
# ----------------------------------------------------------------------------


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``('data',)`` mesh over all (global) devices, with Auto axis types."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def compile_steps(fns: dict, mesh: Mesh) -> dict:
  """``jax.jit`` each step with a replicated state and a data-sharded batch."""
  repl = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  out = {}
  out["train"] = jax.jit(
    fns["train"], in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0
  )
  out["arsp"] = jax.jit(
    fns["arsp"], in_shardings=(repl, data, data), out_shardings=(repl, repl), donate_argnums=0
  )
  out["eval"] = jax.jit(fns["eval"], in_shardings=(repl, data), out_shardings=repl)
  return out


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Assembles this process's slice of a global batch into global arrays sharded on 'data'."""
  sharding = NamedSharding(mesh, P("data"))
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def shard_full_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a batch every process holds in full (fixed calibration/reward sets)."""
  sharding = NamedSharding(mesh, P("data"))
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
  return out
