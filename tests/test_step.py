"""The compiled SPMD steps: 1 device vs 8 fake CPU devices, masks, gradient statistics."""

import chex
import jax
import numpy as np
import pytest

from arsp_jax.train import loop
from arsp_jax.train import step as step_lib
from arsp_jax.train.model_fns import make_loss_fn
from arsp_jax.train.state import flatten, unflatten
from bench import train_step as train_step_bench
from tests.util import tiny_config


def _pipeline(num_devices, **kw):
  return loop.Pipeline(tiny_config(num_devices=num_devices, **kw), "/tmp/unused", progress=False)


def _batches(pipe, n, epoch=0):
  out = []
  while len(out) < n:
    for b in pipe.dataset.train_batches(epoch, pipe.cfg.batch_size, pipe.cfg.seed):
      if len(out) == n:
        break
      out.append(b)
    epoch += 1
  return out


def _host(tree):
  return jax.device_get(tree)


def test_dense_step_same_on_1_and_8_devices():
  results = []
  for n in (1, 8):
    pipe = _pipeline(n)
    _, steps = pipe.steps("dense")
    state = pipe.fresh_state("dense")
    for b in _batches(pipe, 5):
      state, m = steps.train()(state, step_lib.shard_batch(b, pipe.mesh))
    results.append(_host((state.params, state.batch_stats, m["loss"])))
    assert len(state.params["fc1"]["kernel"].sharding.device_set) == n
  chex.assert_trees_all_close(results[0], results[1], atol=2e-5, rtol=1e-4)


def test_latent_weights_clipped_and_sign_zero_is_plus_one():
  pipe = _pipeline(1, learning_rate=0.5)  # huge steps push latent weights past the clip
  _, steps = pipe.steps("dense")
  state = pipe.fresh_state("dense")
  for b in _batches(pipe, 3):
    state, _ = steps.train()(state, step_lib.shard_batch(b, pipe.mesh))
  k = np.asarray(state.params["fc1"]["kernel"])
  assert np.abs(k).max() <= 1.0 and np.isclose(np.abs(k).max(), 1.0)


_ARSP_PIPES = {}


def _arsp_pipeline(n):
  """One pipeline per device count, shared by tests (compiling the ARSP step is the slow part)."""
  if n not in _ARSP_PIPES:
    _ARSP_PIPES[n] = _pipeline(n)
  return _ARSP_PIPES[n]


def _run_arsp(n, steps_to_run=9, host_chosen=True):
  pipe = _arsp_pipeline(n)
  _, dsteps = pipe.steps("dense")
  state = pipe.fresh_state("dense")
  for b in _batches(pipe, 3):
    state, _ = dsteps.train()(state, step_lib.shard_batch(b, pipe.mesh))
  tx, steps = pipe.steps("arsp")
  state = step_lib.replicate(step_lib.start_phase(state, "arsp", tx, pipe.info, pipe.rc), pipe.mesh)
  aux = pipe.aux_batches()
  rounds = []
  cond_step = None if host_chosen else train_step_bench.jit_cond_step(pipe, tx)
  for i, b in enumerate(_batches(pipe, steps_to_run, epoch=1)):
    due = step_lib.round_due(i, pipe.cfg.arsp.prune_every)
    fn = steps.arsp(with_round=due) if host_chosen else cond_step
    state, m = fn(state, step_lib.shard_batch(b, pipe.mesh), aux)
    if bool(m["did_round"]):
      rounds.append(_host(m))
  return pipe, _host(state), rounds


@pytest.mark.slow
def test_host_chosen_round_steps_match_the_cond_step():
  """The loop calls the step with the round when one is due and the one without otherwise
  (no lax.cond on the device); the state and round metrics equal the cond step's (the old form,
  kept in bench/train_step.py for its timing comparison)."""
  _, ref, r_ref = _run_arsp(1, host_chosen=False)
  _, got, r_got = _run_arsp(1)
  assert len(r_got) == len(r_ref) == 2
  chex.assert_trees_all_equal(got.masks, ref.masks)
  chex.assert_trees_all_close(got.keep_ratios, ref.keep_ratios, atol=1e-7)
  chex.assert_trees_all_close(got.agent["agent"].params, ref.agent["agent"].params, atol=1e-6)
  chex.assert_trees_all_close(got.params, ref.params, atol=1e-6)
  chex.assert_trees_all_close(got.grad_ema, ref.grad_ema, atol=1e-6)
  assert int(got.step) == int(ref.step) == 9
  for a, b in zip(r_got, r_ref):
    assert set(a) == set(b)
    np.testing.assert_allclose(a["round_accuracy"], b["round_accuracy"], atol=1e-7)


def test_arsp_step_same_on_1_and_8_devices():
  """The same run to float tolerance. 8 devices sum the gradients in another order (~1e-7);
  the agent's 16 PPO epochs per round carry that to ~1e-5 in its parameters and ~1e-4 in the
  keep ratios, so a layer may keep one connection more or less at the budget's rounding
  boundary (measured: 1 of fc1's 25,088) and the weights then train apart by ~2e-4."""
  _, s1, r1 = _run_arsp(1)
  _, s8, r8 = _run_arsp(8)
  assert len(r1) == len(r8) == 2  # prune_every=4: rounds at the start of steps 5 and 9
  assert int(s1.agent["agent"].updates) == int(s8.agent["agent"].updates) == 2  # one per round
  flipped = 0
  for a, b in zip(jax.tree.leaves(s1.masks), jax.tree.leaves(s8.masks)):
    assert np.mean(np.asarray(a) != np.asarray(b)) <= 1e-4  # at most 1 in 10,000 differs
    flipped += int(np.sum(np.asarray(a) != np.asarray(b)))
  chex.assert_trees_all_close(s1.keep_ratios, s8.keep_ratios, atol=5e-4)
  chex.assert_trees_all_close(s1.agent["agent"].params, s8.agent["agent"].params, atol=1e-4)
  chex.assert_trees_all_close(s1.grad_ema, s8.grad_ema, atol=1e-3)
  chex.assert_trees_all_close(s1.params, s8.params, atol=1e-3)
  # Batchnorm statistics: equal but for the units a flipped connection feeds (one each).
  for a, b in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s8.batch_stats)):
    assert np.sum(~np.isclose(a, b, rtol=2e-3, atol=1e-3)) <= flipped
  for a, b in zip(r1, r8):
    np.testing.assert_allclose(a["round_accuracy"], b["round_accuracy"], atol=1e-6)


def test_arsp_round_meets_budget_and_pruned_connections_have_no_effect():
  pipe, state, rounds = _run_arsp(1, steps_to_run=16)
  info = pipe.info
  # Budget schedule: density is non-increasing and reaches the target (0.3) by the last round.
  dens = [r["new_density"] for r in rounds]
  assert all(b <= a + 1e-6 for a, b in zip(dens, dens[1:]))
  slack = 0.5 * info.num_layers / info.total  # rounding k = round(rho * n), per layer
  assert 0.3 - 2 * slack - 1e-6 <= dens[-1] <= 0.3 + slack + 1e-6
  # Exact k per layer: kept count == round(keep_ratio * n).
  flat = flatten(state.masks)
  for i, (p, n) in enumerate(zip(info.paths, info.sizes)):
    assert int(flat[p].sum()) == int(np.round(float(state.keep_ratios[i]) * n))
  # Effective weights are exactly zero where masked: changing pruned latent weights
  # (even flipping their signs) leaves the logits unchanged.
  x = pipe.dataset.fixed_batch("test", 16, 0)["image"]
  variables = {"params": state.params, "batch_stats": state.batch_stats, "masks": state.masks}
  base = pipe.model.apply(variables, x, train=False)
  fp = flatten(state.params)
  for p in info.paths:
    fp[p] = np.where(flat[p] == 0, -fp[p] + 0.3, fp[p])
  variables["params"] = unflatten(fp)
  np.testing.assert_array_equal(base, pipe.model.apply(variables, x, train=False))


def test_grad_ema_tracks_mean_abs_gradient():
  pipe = _arsp_pipeline(1)
  decay = pipe.rc.grad_ema_decay
  tx, steps = pipe.steps("arsp")
  state = step_lib.replicate(
    step_lib.start_phase(pipe.fresh_state("dense"), "arsp", tx, pipe.info, pipe.rc), pipe.mesh
  )
  b = _batches(pipe, 1)[0]
  loss_fn = make_loss_fn(pipe.model)
  grads = jax.grad(lambda p: loss_fn(p, state.batch_stats, state.masks, b["image"], b["label"])[0])(
    state.params
  )
  arsp_step = steps.arsp(with_round=False)
  state, _ = arsp_step(state, step_lib.shard_batch(b, pipe.mesh), pipe.aux_batches())
  for p in pipe.info.paths:
    # The statistics start at zero: after one step they are (1 - decay) * |g|.
    np.testing.assert_allclose(
      state.grad_ema[p], (1 - decay) * np.abs(flatten(grads)[p]), rtol=1e-4, atol=1e-8
    )
