"""Prune your own Flax model with arsp_jax's primitives, in your own training loop.

``MyMLP`` below is an ordinary Flax model written here (not one of arsp_jax's registered
models), trained with optax on synthetic class-structured data. After ``--dense_steps`` steps,
every ``--prune_every`` steps a pruning round, compiled as one function:

1. the round's density budget and sampling temperature (``rounds.budget_density``: a cubic
   schedule down to ``1 - --sparsity``; ``rounds.round_temperature``: annealed to 0), from one
   ``rounds.RoundConfig``;
2. each layer's survival scores, ``scores.taylor(w, running mean of |dL/dw|)``;
3. the agent proposes ``P`` candidate allocations (``ppo.propose``), mapped onto the budget
   (``ppo.offsets_to_ratios``); each candidate's masks are weighted reservoir samples
   (``reservoir.reservoir_masks``) scored with ``rounds.reward`` on held-out images, and one
   PPO update (``ppo.ppo_update``) learns from the ``P`` rewards;
4. the masks of the agent's mode allocation replace the old ones; training goes on under them.

The library's own round (``arsp_jax/train/round.py``) also re-estimates batchnorm statistics and
trains each candidate for a few recovery steps before reading its reward (accuracy right after
pruning ranks allocations poorly); this example leaves both out to stay short.

  python examples/prune_my_mlp.py                  # 300 steps: under a minute on 2 CPU cores
  python examples/prune_my_mlp.py --sparsity=0.95 --steps=600
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from arsp_jax.pruning import budget, ppo, reservoir, rounds, scores  # noqa: E402


class MyMLP(nn.Module):
  """Your model: any Flax module whose prunable weights are kernels."""

  hidden: tuple = (128, 64)
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    return nn.Dense(self.classes, name="out")(x)


def masked(params, masks):
  """Each pruned layer's kernel times its 0/1 mask (the gradient of a pruned weight is 0)."""
  return {
    k: {**v, "kernel": v["kernel"] * masks[k]} if k in masks else v for k, v in params.items()
  }


def synthetic_data(seed: int, n: int, dim: int = 64, classes: int = 10):
  """Gaussian clusters around fixed class centres: ``(images [n, dim], labels [n])``."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  labels = rng.integers(0, classes, n)
  x = centres[labels] + 1.5 * rng.normal(size=(n, dim))
  return x.astype(np.float32), labels.astype(np.int32)


def minibatches(n: int, size: int, seed: int):
  """Endless shuffled epochs of ``[size]`` row indices."""
  rng = np.random.default_rng(seed)
  while True:
    yield from rng.permutation(n).reshape(-1, size)


def parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--dense_steps", type=int, default=100)
  ap.add_argument("--prune_every", type=int, default=20)
  ap.add_argument("--rounds", type=int, default=8, help="pruning rounds")
  ap.add_argument("--sparsity", type=float, default=0.9)
  ap.add_argument("--population", type=int, default=8, help="candidates per round (P)")
  ap.add_argument("--hidden", default="128,64", help="hidden widths of MyMLP")
  ap.add_argument("--features", type=int, default=64, help="input features")
  ap.add_argument("--seed", type=int, default=0)
  return ap.parse_args(argv)


def main(argv=None) -> dict:
  args = parse(argv)
  x, y = synthetic_data(args.seed, 6000, args.features)
  train, val, test = (x[:4000], y[:4000]), (x[4000:5000], y[4000:5000]), (x[5000:], y[5000:])
  model = MyMLP(hidden=tuple(int(h) for h in args.hidden.split(",")))
  params = model.init(jax.random.PRNGKey(args.seed), x[:1])["params"]
  layers = sorted(params)  # reservoir_masks visits layers in sorted order: ratios follow it
  sizes = tuple(int(params[k]["kernel"].size) for k in layers)
  rc = rounds.RoundConfig(  # every round setting in one place
    target_density=1.0 - args.sparsity,
    budget_rounds=max(1, 3 * args.rounds // 4),  # the budget tightens, then holds
    rho_min=0.01,
    temperature=1.0,
    temperature_anneal=True,
    reward_metric="loss",  # the reward: minus the validation loss (less noisy than accuracy)
    ppo=ppo.PPOConfig(population=args.population),
  )
  tx = optax.adam(1e-3)

  def loss_and_accuracy(params, masks, images, labels):
    logits = model.apply({"params": masked(params, masks)}, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  @jax.jit
  def train_step(params, opt_state, grad_ema, masks, images, labels):
    loss_fn = lambda p: loss_and_accuracy(p, masks, images, labels)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    grad_ema = {k: 0.9 * grad_ema[k] + 0.1 * jnp.abs(grads[k]["kernel"]) for k in layers}
    return params, opt_state, grad_ema, loss

  @jax.jit
  def pruning_round(params, grad_ema, agent, rng, round_idx):
    density = rounds.budget_density(round_idx, rc) - budget.rounding_slack(sizes)
    temperature = rounds.round_temperature(round_idx, rc)
    sc = {k: scores.taylor(params[k]["kernel"], grad_ema[k]) for k in layers}
    mean_w = jnp.stack([jnp.mean(jnp.abs(params[k]["kernel"])) for k in layers])
    mean_g = jnp.stack([jnp.mean(grad_ema[k]) for k in layers])
    obs = ppo.layer_observations(mean_w, mean_g, sizes)
    r_agent, r_mask = jax.random.split(rng)
    u, logp, _ = ppo.propose(agent.params, obs, r_agent, rc.ppo)  # [P, L] offsets
    candidates = ppo.offsets_to_ratios(u, sizes, density, rc.rho_min)  # [P, L] on the budget

    def reward(ratios):  # one candidate, scored on the same validation images as the others
      masks = reservoir.reservoir_masks(r_mask, sc, ratios, temperature=temperature)
      loss, acc = loss_and_accuracy(params, masks, *val)
      kept = sum(jnp.sum(m) for m in masks.values()) / sum(sizes)
      return rounds.reward(acc, loss, kept, rc)

    rewards = jax.vmap(reward)(candidates)
    agent, _ = ppo.ppo_update(agent, obs, u, logp, rewards, rc.ppo)
    mode = ppo.mode_offsets(agent.params, obs, rc.ppo)[None]
    ratios = ppo.offsets_to_ratios(mode, sizes, density, rc.rho_min)[0]
    masks = reservoir.reservoir_masks(r_mask, sc, ratios, temperature=temperature)
    return masks, agent, jnp.max(rewards)

  rng = jax.random.PRNGKey(args.seed + 1)
  agent = ppo.init_agent(jax.random.PRNGKey(args.seed + 2), len(layers), rc.ppo)
  masks = {k: jnp.ones_like(params[k]["kernel"]) for k in layers}
  grad_ema = {k: jnp.zeros_like(params[k]["kernel"]) for k in layers}
  opt_state = tx.init(params)
  batches = minibatches(len(train[0]), 100, args.seed)
  done = 0
  for step in range(args.steps):
    since = step - args.dense_steps
    if since > 0 and since % args.prune_every == 0 and done < args.rounds:
      rng, sub = jax.random.split(rng)
      masks, agent, best = pruning_round(params, grad_ema, agent, sub, done)
      done += 1
      kept = sum(float(m.sum()) for m in masks.values()) / sum(sizes)
      print(f"round {done}: density {kept:.3f}, best candidate reward {float(best):.3f}")
    idx = next(batches)  # your data pipeline
    params, opt_state, grad_ema, loss = train_step(
      params, opt_state, grad_ema, masks, train[0][idx], train[1][idx]
    )
  _, test_acc = loss_and_accuracy(params, masks, *test)
  layer_density = {k: float(masks[k].mean()) for k in layers}
  density = sum(float(masks[k].sum()) for k in layers) / sum(sizes)
  print(f"test accuracy {float(test_acc):.4f} at sparsity {1 - density:.4f}")
  print("layer density " + ", ".join(f"{k} {d:.3f}" for k, d in layer_density.items()))
  return {
    "test_accuracy": float(test_acc),
    "sparsity": 1.0 - density,
    "layer_density": layer_density,
    "rounds": done,
  }


if __name__ == "__main__":
  main()
