"""The compiled SPMD training steps.

Steps are pure ``(state, batch[, aux]) -> (state, metrics)`` functions compiled
once with ``jax.jit`` over a ``('data',)`` device mesh: the batch is sharded
along its leading axis, the state is replicated.  This is the SPMD form of
``pmap``: XLA inserts the cross-device reductions, so the loss (hence the
gradient), the batchnorm batch statistics and the reward accuracy are means over
the *global* batch and the replicated controller stays identical on every device.

:class:`Steps` holds a phase's compiled steps, each picked by flags:

* ``steps.train(window=False)`` — BinaryConnect: STE gradients, latent weights clipped, masks
  fixed; the dense phase (Adam) and the fine-tuning phase (SGD+momentum by default, frozen
  masks) use it.
* ``steps.arsp(with_round, window=False)`` — the pruning phase: the update with masks and
  gradient statistics, preceded by one pruning round (``round.py``) when ``with_round``. The
  loop knows how many updates the phase has taken and asks for the step with the round when one
  is due (``round_due``): no ``lax.cond`` on the device (a cond made every step ~40% slower on a
  CPU, round or not; ``bench/train_step.py`` keeps that form for the comparison).
* ``window=True`` — ``k`` steps in one program, a ``lax.scan`` over batches stacked
  ``[k, batch, ...]`` (the round, if any, at the start of the window's first step); the loop
  uses them with ``steps_per_window > 1``.
* ``steps.eval`` — summed correct predictions, loss and weight of an evaluation batch.

Each is compiled on first use (:func:`step_fn` gives the uncompiled function of the same flags).
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from arsp_jax.pruning.rounds import RoundConfig
from arsp_jax.train import round as round_lib
from arsp_jax.train.model_fns import cross_entropy, make_loss_fn
from arsp_jax.train.state import (
  LayerInfo,
  TrainState,
  apply_masks_to_params,
  clip_binary_kernels,
  flatten,
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


def update(
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


def no_round_metrics(model, info: LayerInfo, rc: RoundConfig, state: TrainState, aux) -> dict:
  """The round's metrics, zero (their structure from the round itself, not a hand-kept list):
  what a step without a round reports, so that every pruning-phase step has one signature."""
  round_fn = lambda s, a: round_lib.pruning_round(model, info, rc, s, a)[1]
  shapes = jax.eval_shape(round_fn, state, aux)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def step_fn(
  model: nn.Module,
  tx: optax.GradientTransformation,
  info: LayerInfo,
  rc: RoundConfig | None = None,
  *,
  pruning: bool = False,
  with_round: bool = False,
  window: bool = False,
  skip_nonfinite: bool = False,
) -> Callable:
  """The uncompiled training step of the given flags (see the module docstring).

  ``pruning``: the pruning phase's step ``(state, batch, aux)`` (``with_round``: a pruning round
  before the update); else the dense/fine-tuning step ``(state, batch)``. ``window``: ``k`` such
  steps over batches stacked ``[k, batch, ...]``, the per-step metrics stacked likewise.
  ``skip_nonfinite``: see :func:`update`.
  """
  if not pruning:
    one = lambda state, batch: update(
      model, tx, info, state, batch, track_grads=False, decay=0.0, skip_nonfinite=skip_nonfinite
    )
    return (lambda state, batches: jax.lax.scan(one, state, batches)) if window else one

  def arsp_step(state, batch, aux, with_round):
    # The round due after every `prune_every` updates runs at the start of the next step, on
    # the step's input state: XLA then reads the (donated) parameters in the round before the
    # update overwrites them, with no copies (a round placed after the update made XLA copy the
    # new parameters and masks on every step).
    if with_round:
      state, rm = round_lib.pruning_round(model, info, rc, state, aux)
    else:
      rm = no_round_metrics(model, info, rc, state, aux)
    state, metrics = update(
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

  if not window:
    return lambda state, batch, aux: arsp_step(state, batch, aux, with_round)
  return _arsp_window(arsp_step, with_round)


def _arsp_window(arsp_step, with_round: bool) -> Callable:
  """``k`` pruning-phase steps in one ``lax.scan``; with the round, it runs at the start of the
  window's first step only (``k`` is the batches' leading size: one compile per length)."""

  def plain(state, batches, aux):
    return jax.lax.scan(lambda s, b: arsp_step(s, b, aux, False), state, batches)

  def with_first_round(state, batches, aux):
    state, first = arsp_step(state, jax.tree.map(lambda v: v[0], batches), aux, True)
    first = jax.tree.map(lambda v: v[None], first)
    if jax.tree.leaves(batches)[0].shape[0] == 1:
      return state, first
    state, others = plain(state, jax.tree.map(lambda v: v[1:], batches), aux)
    return state, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, others)

  return with_first_round if with_round else plain


def eval_fn(model: nn.Module) -> Callable:
  """``(state, batch) -> {"correct", "loss", "count"}`` summed over the batch's weights."""

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

  return eval_step


class Steps:
  """A phase's steps, ``jax.jit``-compiled on first use over ``mesh``: the state replicated,
  the batch (and the round's fixed ``aux`` sets) sharded on ``'data'``, the state donated."""

  def __init__(self, model, tx, info: LayerInfo, rc: RoundConfig | None, mesh: Mesh, **kw):
    self._build = lambda **flags: step_fn(model, tx, info, rc, **flags, **kw)
    self._mesh = mesh
    self._jitted: dict[tuple, Callable] = {}
    repl = NamedSharding(mesh, P())
    self.eval = jax.jit(eval_fn(model), in_shardings=(repl, self._data()), out_shardings=repl)

  def _data(self, window: bool = False) -> NamedSharding:
    # [k, batch, ...] for a window: steps x the sharded batch
    return NamedSharding(self._mesh, P(None, "data") if window else P("data"))

  def train(self, *, window: bool = False) -> Callable:
    """The dense / fine-tuning step ``(state, batch) -> (state, metrics)``."""
    return self._get(pruning=False, with_round=False, window=window)

  def arsp(self, *, with_round: bool, window: bool = False) -> Callable:
    """The pruning-phase step ``(state, batch, aux) -> (state, metrics)``."""
    return self._get(pruning=True, with_round=with_round, window=window)

  def _get(self, *, pruning: bool, with_round: bool, window: bool) -> Callable:
    key = (pruning, with_round, window)
    if key not in self._jitted:
      repl = NamedSharding(self._mesh, P())
      ins = (repl, self._data(window)) + ((self._data(),) if pruning else ())
      fn = self._build(pruning=pruning, with_round=with_round, window=window)
      self._jitted[key] = jax.jit(
        fn, in_shardings=ins, out_shardings=(repl, repl), donate_argnums=0
      )
    return self._jitted[key]


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``('data',)`` mesh over all (global) devices, with Auto axis types."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def round_due(phase_updates: int, prune_every: int) -> bool:
  """Whether the pruning-phase step taken after ``phase_updates`` updates of the phase carries a
  round (the same rule as the device-side ``cond``: a round every ``prune_every`` updates)."""
  return phase_updates > 0 and phase_updates % prune_every == 0


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
