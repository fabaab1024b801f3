"""The compiled SPMD training steps.

Steps are pure ``(state, batch[, aux]) -> (state, metrics)`` functions compiled
once with ``jax.jit`` over a ``('data',)`` device mesh: the batch is sharded
along its leading axis, the state is replicated.  This is the SPMD form of
``pmap``: XLA inserts the cross-device reductions, so the loss (hence the
gradient), the batchnorm batch statistics and the reward accuracy are means over
the *global* batch and the replicated controller stays identical on every device.

Two training steps (each compiled with the optimizer of its phase):

* ``train``    — BinaryConnect: STE gradients, latent weights clipped, masks fixed; the dense
  phase (Adam) and the fine-tuning phase (SGD+momentum by default, frozen masks) use it.
* ``arsp``     — the dense update with masks + gradient statistics, and every
  ``prune_every`` steps one pruning round (``round.py``). Compiled three ways with the same
  results: ``arsp_round`` (the round, then the update) and ``arsp_plain`` (the update alone),
  which the training loop picks from the update count it keeps (``arsp_step_for``), and
  ``arsp``, which decides on the device with a ``lax.cond`` (kept for comparison: the cond
  made every step ~40% slower on a CPU, round or not).

The multi-step forms (``window_fns``: ``train_window``, ``arsp_window_round``,
``arsp_window_plain``) run a window of ``k`` steps in one program, a ``lax.scan`` over batches
stacked ``[k, batch, ...]``; the loop uses them with ``steps_per_window > 1``.
"""

from __future__ import annotations

import collections
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from arsp_jax.train import round as round_lib
from arsp_jax.train.model_fns import (  # noqa: F401
  accuracy_on,
  cross_entropy,
  make_loss_fn,
  recalibrate_batch_stats,
)
from arsp_jax.train.round import RoundConfig, budget_density, pruning_round  # noqa: F401
from arsp_jax.train.state import (  # noqa: F401  (the step API in one place)
  LayerInfo,
  TrainState,
  apply_masks_to_params,
  clip_binary_kernels,
  create_state,
  flatten,
  layer_density,
  overall_density,
  prunable_kernels,
  unflatten,
)

Array = jax.Array


def make_optimizer(
  kind: str, learning_rate: Any, *, momentum: float = 0.9
) -> optax.GradientTransformation:
  """Adam or SGD with momentum; ``learning_rate`` is a float or an optax schedule."""
  if kind == "adam":
    return optax.adam(learning_rate)
  if kind == "sgd":
    return optax.sgd(learning_rate, momentum=momentum)
  raise ValueError(f"Unknown optimizer {kind!r}")


def start_phase(
  state: TrainState,
  phase: str,
  tx: optax.GradientTransformation,
  info: LayerInfo,
  rc: RoundConfig | None = None,
) -> TrainState:
  """Re-initialises phase-specific parts of the state (optimizer, controller, statistics)."""
  params = state.params
  grad_ema, agent, prune = {}, {}, {}
  if phase == "arsp":
    assert rc is not None
    grad_ema = {
      p: jnp.zeros(s if rc.per_weight_grads else (), jnp.float32)
      for p, s in zip(info.paths, info.shapes)
    }
    rng, sub = jax.random.split(state.rng)
    agent, prune = round_lib.init_prune_state(sub, info, rc)
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


def _make_arsp_step(
  model, tx, info: LayerInfo, rc: RoundConfig, skip_nonfinite: bool, force_round=None
):
  """The pruning-phase step: a pruning round when one is due, then the update.

  ``force_round=None``: the step decides on the device (``lax.cond`` on the step counter);
  ``True`` / ``False``: the step always / never runs the round (no ``cond``: the caller, who
  knows the step count, picks the one that is due; see ``arsp_step_for``). The three give the
  same results; the host-chosen pair spares every step without a round the ``cond``."""

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
      # The same metrics, zero (their structure from the round itself, not a hand-kept list).
      shapes = jax.eval_shape(with_round, read_only, changed, aux)[1]
      return changed, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    if force_round is None:
      changed, rm = jax.lax.cond(do_round, with_round, without_round, read_only, changed, aux)
    elif force_round:
      changed, rm = with_round(read_only, changed, aux)
    else:
      changed, rm = without_round(read_only, changed, aux)
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

  return arsp_step


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

  arsp_step = _make_arsp_step(model, tx, info, rc, skip_nonfinite)
  arsp_round = _make_arsp_step(model, tx, info, rc, skip_nonfinite, force_round=True)
  arsp_plain = _make_arsp_step(model, tx, info, rc, skip_nonfinite, force_round=False)

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

  return {
    "train": train_step,
    "arsp": arsp_step,
    "arsp_round": arsp_round,
    "arsp_plain": arsp_plain,
    "eval": eval_step,
    **window_fns(train_step, arsp_round, arsp_plain),
  }


def window_fns(train_step, arsp_round, arsp_plain) -> dict:
  """The multi-step forms: ``k`` training steps in one program, a ``lax.scan`` over a window of
  batches stacked on a leading axis (``[k, batch, ...]``), returning the per-step metrics
  stacked over the window. ``arsp_window_round`` runs the pruning round (PPO update included)
  at the start of its window's first step, then the window's other steps without one;
  ``arsp_window_plain`` has no round. ``k`` is the batches' leading size (one compile per
  window length)."""

  def train_window(state, batches):
    return jax.lax.scan(train_step, state, batches)

  def arsp_window_plain(state, batches, aux):
    return jax.lax.scan(lambda s, b: arsp_plain(s, b, aux), state, batches)

  def arsp_window_round(state, batches, aux):
    state, first = arsp_round(state, jax.tree.map(lambda v: v[0], batches), aux)
    first = jax.tree.map(lambda v: v[None], first)
    if jax.tree.leaves(batches)[0].shape[0] == 1:
      return state, first
    rest = jax.tree.map(lambda v: v[1:], batches)
    state, others = arsp_window_plain(state, rest, aux)
    return state, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, others)

  return {
    "train_window": train_window,
    "arsp_window_round": arsp_window_round,
    "arsp_window_plain": arsp_window_plain,
  }


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
  for name in ("arsp", "arsp_round", "arsp_plain"):  # compiled on first use
    out[name] = jax.jit(
      fns[name], in_shardings=(repl, data, data), out_shardings=(repl, repl), donate_argnums=0
    )
  out["eval"] = jax.jit(fns["eval"], in_shardings=(repl, data), out_shardings=repl)
  window = NamedSharding(mesh, P(None, "data"))  # [k, batch, ...]: steps x the sharded batch
  out["train_window"] = jax.jit(
    fns["train_window"], in_shardings=(repl, window), out_shardings=(repl, repl), donate_argnums=0
  )
  for name in ("arsp_window_round", "arsp_window_plain"):
    out[name] = jax.jit(
      fns[name], in_shardings=(repl, window, data), out_shardings=(repl, repl), donate_argnums=0
    )
  return out


def round_due(phase_updates: int, prune_every: int) -> bool:
  """Whether the pruning-phase step taken after ``phase_updates`` updates of the phase carries a
  round (the same rule as the device-side ``cond``: a round every ``prune_every`` updates)."""
  return phase_updates > 0 and phase_updates % prune_every == 0


def arsp_step_for(steps: dict, phase_updates: int, prune_every: int):
  """The compiled pruning-phase step for the step after ``phase_updates`` updates: the one with
  the round when a round is due, else the one without (no ``cond`` on the device)."""
  return steps["arsp_round"] if round_due(phase_updates, prune_every) else steps["arsp_plain"]


def window_lengths(
  first: int,
  steps_per_epoch: int,
  steps_per_window: int,
  cut_after=lambda step: False,
) -> list[int]:
  """The lengths of the windows that run an epoch's steps ``first..steps_per_epoch`` (1-based).

  A window ends at a multiple of ``steps_per_window`` (counted from the epoch's start, so a
  resumed epoch cuts where an uninterrupted one does), at the epoch's end, and after every step
  ``s`` with ``cut_after(s)`` (the loop cuts before each pruning round, so that a round starts its
  window, and at every ``checkpoint_every_steps`` multiple, so that checkpoints stay exact)."""
  out, start = [], first
  for s in range(first, steps_per_epoch + 1):
    if s == steps_per_epoch or s % steps_per_window == 0 or cut_after(s):
      out.append(s - start + 1)
      start = s + 1
  return out


def stack_windows(batches, lengths):
  """Groups host batches into windows of the given lengths, every leaf stacked on a new leading
  axis (``[k, batch, ...]``)."""
  it = iter(batches)
  for k in lengths:
    group = [next(it) for _ in range(k)]
    yield {key: np.stack([np.asarray(b[key]) for b in group]) for key in group[0]}


def shard_window(window: dict, mesh: Mesh) -> dict:
  """``shard_batch`` for a window ``[k, local batch, ...]``: steps replicated, batch on 'data'."""
  sharding = NamedSharding(mesh, P(None, "data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in window.items()}


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Assembles this process's slice of a global batch into global arrays sharded on 'data'."""
  sharding = NamedSharding(mesh, P("data"))
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def device_batches(batches, mesh: Mesh, ahead: int = 1, place=shard_batch):
  """``place`` (``shard_batch``, or ``shard_window`` for windows) of each host batch, placed
  ``ahead`` batches before the step asks for it (the transfer of batch i + 1 overlaps step i:
  JAX dispatches both asynchronously)."""
  queue: collections.deque = collections.deque()
  for b in batches:
    queue.append(place(b, mesh))
    if len(queue) > ahead:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def shard_full_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a batch every process holds in full (fixed calibration/reward sets)."""
  sharding = NamedSharding(mesh, P("data"))
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
  return out
