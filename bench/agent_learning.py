"""The agent against random search on the 8-layer known-optimum task of tests/test_agent.py.

Drives the real pruning round with the test's synthetic reward (minus the squared log keep-ratio
distance to a fixed interior optimum) and records, per seed and per round, the distance of the
applied allocation to the optimum (max over layers of |log rho - log rho*|) and the best reward
so far, for the agent (its mode) and random search (its incumbent), at equal candidate
evaluations (P per round for both), and the evaluations each needs to reach the optimum
(tests/test_agent.evals_to_reach) at several thresholds.

  python bench/agent_learning.py                      # P = 8 and 16, 5 seeds, 50 rounds
  python bench/agent_learning.py --populations=8 --set ppo_lr=1e-4   # a weakened agent
  python bench/agent_learning.py --populations=8 --noise=0.1 --set antithetic=true \
    --out=bench/results/agent_learning_noise0.1_antithetic.json

``--noise=S`` adds to each candidate's reward a Gaussian error of standard deviation S that is a
fixed function of the candidate (seeded by its keep ratios), as a measured reward's error is:
both controllers then search under the same kind of noise.

Writes bench/results/agent_learning.json and bench/results/agent_learning.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The tests' XLA settings (tests/conftest.py), before JAX starts: the test's exact numbers.
importlib.import_module("tests.conftest")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from arsp_jax.pruning import ppo  # noqa: E402
from arsp_jax.train import round as round_lib  # noqa: E402
from bench.benchutil import cpu_model  # noqa: E402
from tests import test_agent as task  # noqa: E402

THRESHOLDS = (0.1, 0.15, 0.2)  # 0.2: the tests' EPS


@functools.cache
def noisy_reward(want: tuple, noise: float):
  """The task's reward plus a N(0, noise^2) error drawn from a key that the candidate's keep
  ratios seed (the same candidate always gets the same error)."""
  base = task._distance_reward(want)
  if noise <= 0:
    return base
  w = np.random.default_rng(1).normal(size=len(want)).astype(np.float32)

  def one_error(r):
    bits = jax.lax.bitcast_convert_type(jnp.dot(r, w), jnp.uint32)
    return noise * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(7), bits))

  return lambda r: base(r) + jax.vmap(one_error)(r)


@functools.cache
def round_fn(reward, ctrl, population, overrides: tuple):
  """The test's compiled round, with the agent's overrides (one compile per setting)."""
  rc, fn = task._round_fn(task.DEEP, reward, ctrl, 0.7, population)
  if not overrides:
    return rc, fn
  pipe, _ = task._pipeline(task.DEEP, population=population)
  rc = dataclasses.replace(rc, ppo=dataclasses.replace(rc.ppo, **dict(overrides)))
  return rc, jax.jit(lambda s, a: round_lib.pruning_round(pipe.model, pipe.info, rc, s, a, reward))


def trajectory(population, ctrl, seed, rounds, ppo_overrides, noise=0.0):
  """Per-round distance to the optimum and best-so-far reward of one run."""
  pipe, state = task._pipeline(task.DEEP, population=population)
  want = task.deep_optimum(population)
  reward = noisy_reward(want, noise)
  rc, fn = round_fn(reward, ctrl, population, tuple(sorted(ppo_overrides.items())))
  ctrl_state, prune = round_lib.init_prune_state(jax.random.PRNGKey(100 + seed), pipe.info, rc)
  state = state.replace(rng=jax.random.PRNGKey(seed), agent=ctrl_state, prune=prune)
  aux = pipe.aux_batches()
  ratios, best = [], []
  for _ in range(rounds):
    state, m = fn(state, aux)
    ratios.append(np.asarray(m["keep_ratios"]))
    best.append(float(m["controller"]["best_reward"]))
  ratios = np.stack(ratios)
  dist = np.abs(np.log(ratios) - np.log(np.asarray(want))).max(axis=1)
  reach = {str(e): task.evals_to_reach(ratios, want, population, e) for e in THRESHOLDS}
  reach = {e: (None if n == float("inf") else int(n)) for e, n in reach.items()}  # None: never
  return {"distance": dist.tolist(), "best_reward": best, "evals_to_reach": reach}


def plot(results, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  pops = sorted(results, key=int)
  fig, axes = plt.subplots(2, len(pops), figsize=(5 * len(pops), 7), squeeze=False)
  for j, pop in enumerate(pops):
    for ctrl, colour in (("ppo", "C0"), ("random_search", "C1")):
      runs = results[pop][ctrl]
      for k, key in enumerate(("distance", "best_reward")):
        ys = np.asarray([r[key] for r in runs]) * (1 if key == "distance" else -1)
        x = (np.arange(ys.shape[1]) + 1) * int(pop)
        ax = axes[k, j]
        ax.plot(x, ys.T, color=colour, alpha=0.25, lw=0.8)
        ax.plot(x, np.median(ys, 0), color=colour, lw=2, label=f"{ctrl} (median of {len(ys)})")
    axes[0, j].axhline(task.DEEP_EPS, color="k", ls="--", lw=0.8)
    axes[0, j].set(yscale="log", ylabel="max |log rho - log rho*|", title=f"P = {pop}")
    axes[1, j].set(yscale="log", ylabel="-(best reward so far): 0 at the optimum")
    axes[1, j].set(xlabel="candidate evaluations")
    axes[0, j].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def parse(default, text: str):
  """``text`` as the type of the PPOConfig field's ``default`` (booleans: true / false)."""
  if isinstance(default, bool):
    if text.lower() not in ("true", "false"):
      raise SystemExit(f"error: expected true or false, got {text!r}")
    return text.lower() == "true"
  return type(default)(text)


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--populations", default="8,16")
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=task.DEEP_ROUNDS)
  ap.add_argument("--set", action="append", default=[], help="PPOConfig field=value (agent)")
  ap.add_argument("--noise", type=float, default=0.0, help="std of the reward's error")
  ap.add_argument("--out", default="bench/results/agent_learning.json")
  args = ap.parse_args()
  over = {k: parse(getattr(ppo.PPOConfig(), k), v) for k, v in (s.split("=") for s in args.set)}
  results = {}
  for pop in [int(p) for p in args.populations.split(",")]:
    results[str(pop)] = {}
    for ctrl in ("ppo", "random_search"):
      extra = over if ctrl == "ppo" else {}
      runs = [trajectory(pop, ctrl, s, args.rounds, extra, args.noise) for s in range(args.seeds)]
      results[str(pop)][ctrl] = runs
      print(pop, ctrl, [r["evals_to_reach"][str(task.DEEP_EPS)] for r in runs], flush=True)
  settings = {**vars(args), "hidden": task.DEEP, "eps": task.DEEP_EPS, "cpu": cpu_model()}
  settings["optimum"] = {p: task.deep_optimum(int(p)) for p in results}
  settings["agent"] = dataclasses.asdict(dataclasses.replace(ppo.PPOConfig(), **over))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "agent_learning", "settings": settings, "results": results}, f)
  plot(results, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
  main()
