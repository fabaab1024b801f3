"""Is the agent's reward the right one? Its rank correlation with the fine-tuned accuracy on
**held-out validation images** (never the test set, never the reward's own images).

The target: accuracy after fine-tuning on the validation images that the reward does not read
(the validation split minus the reward's ``reward_size`` images, ``Dataset.held_out``; with the
default 5,000 and 2,000, 3,000 images). The test set plays no part: tuning the reward on it
would leak the final tables into the method.

From one dense start per model, draws allocations at the target budget from the agent's own
candidate distribution (its initial policy), measures for each the reward the agent uses
(``train/candidates.py``: K recovery steps, batchnorm re-estimated, the metric on the reward
images) and, separately, the held-out validation accuracy after fine-tuning under that
allocation's masks (mean of ``--seeds`` data orders), and reports Spearman's rho with a
bootstrap 95% CI. Also the reward's noise: the paired standard error of a candidate's reward
minus a same-batch reference (the uniform allocation), per candidate, from per-image
correctness.

  python bench/reward.py                          # default MLP and the deep MLP
  python bench/reward.py --models=deep --allocations=12 --finetune_epochs=10

Writes bench/results/reward_<model>.json (settings, per-allocation numbers, statistics).

With ``--from_study=STUDY_DIR`` it instead scores the allocations a study has already fine-tuned
with its full protocol (the frontier studies' ``random_alloc`` runs at one sparsity): each
run's final checkpoint gives its held-out validation accuracy, and each seed's reward is
computed from that seed's own dense start (``STUDY_DIR/runs/dense_s<seed>``) with that seed's
validation split, so the reward's images are never another seed's training images::

  python bench/reward.py --models=deep --from_study=results/frontier_deep --sparsity=0.98
  python bench/reward.py --models=deep --from_study=results/frontier_deep --sparsity=0.98 \
    --set arsp.recovery_steps=20 --set arsp.reward_size=4000 --heldout_excludes=4000 --tag=k20

writes bench/results/reward_<model>_study_<sparsity>[_<tag>].json. ``--heldout_excludes``: the
reward-set size whose images are left out of the target (default: the reward variant's own; give
the largest when comparing variants, so that they share one target).

Study mode also reports ``target_ceiling``: the seeds' agreement on the allocations' ranking and
the highest Spearman any reward could expect against their mean; ``--ceiling_of FILE...`` adds
it to earlier result files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arsp_jax import configs  # noqa: E402
from arsp_jax.configs import fashion_mnist_deep, fashion_mnist_hourglass  # noqa: E402
from arsp_jax.pruning import budget, ppo  # noqa: E402
from arsp_jax.pruning.rounds import RoundConfig  # noqa: E402
from arsp_jax.train import candidates, evaluate, loop, resume  # noqa: E402
from arsp_jax.train import model_fns as fns  # noqa: E402
from arsp_jax.train import round as round_lib  # noqa: E402
from arsp_jax.train import step as step_lib  # noqa: E402
from bench.benchutil import cpu_model  # noqa: E402

MODELS = {
  "mlp": {},
  "deep": {"model_kwargs.hidden": fashion_mnist_deep.HIDDEN},
  "hourglass": {"model_kwargs.hidden": fashion_mnist_hourglass.HIDDEN},
}


def train_epochs(pipe, state, phase, epochs, seed):
  _, steps = pipe.steps(phase)
  for epoch in range(epochs):
    for b in pipe.dataset.train_batches(epoch, pipe.cfg.batch_size, seed):
      state, _ = steps.train()(state, step_lib.shard_batch(b, pipe.mesh))
  return state


def test_accuracy(pipe, state):
  return pipe.evaluate(state, "test")["accuracy"]


def heldout_accuracy(pipe, state, exclude: int | None = None) -> float:
  """Accuracy of ``state`` on the validation images the reward does not read (those of the
  pipeline's seed; ``exclude``: the reward-set size to leave out, default the configured one)."""
  size = min(exclude or pipe.cfg.arsp.reward_size, pipe.dataset.num_val)
  batch = pipe.dataset.held_out("val", size, pipe.cfg.seed + 1)
  if batch["label"].shape[0] == 0:
    sys.exit("no held-out validation image: lower arsp.reward_size below val_size")
  logits = fns.logits_on(
    pipe.model, state.params, state.batch_stats, state.masks, jnp.asarray(batch["image"]), 1000
  )
  return float(np.mean(np.argmax(np.asarray(logits), -1) == batch["label"]))


def finetune(pipe, dense, ratios, epochs, seed):
  """Held-out validation accuracy after fine-tuning ``dense`` (host copy) under top-k masks at
  ``ratios``."""
  dense = step_lib.replicate(dense, pipe.mesh)  # fresh buffers: the steps donate their input
  masks = round_lib.compute_masks(
    jax.random.PRNGKey(0),
    dense.params,
    {},
    jnp.asarray(ratios),
    pipe.info,
    RoundConfig(score="magnitude"),
  )
  state = dense.replace(masks=masks)
  tx, _ = pipe.steps("finetune")
  state = step_lib.replicate(step_lib.start_phase(state, "finetune", tx, pipe.info), pipe.mesh)
  return heldout_accuracy(pipe, train_epochs(pipe, state, "finetune", epochs, seed))


def rewards_of(pipe, dense, ratios):
  """The agent's reward for every allocation (top-k masks), as one evaluate() call."""
  rc = pipe.rc
  tx, _ = pipe.steps("arsp")
  state = step_lib.start_phase(step_lib.replicate(dense, pipe.mesh), "arsp", tx, pipe.info, rc)
  aux = pipe.aux_batches()
  bs = state.batch_stats
  masks_for = lambda r: round_lib.masks_from_scores(
    jax.random.PRNGKey(0),
    round_lib.layer_scores(jax.random.PRNGKey(0), state.params, state.grad_ema, pipe.info, rc),
    r,
    pipe.info,
    rc,
    0.0,
  )
  fns = round_lib.model_functions(pipe.model, pipe.info)
  evaluate = candidates.make_evaluator(fns, rc, state.replace(batch_stats=bs), aux, masks_for)
  return jax.device_get(jax.jit(evaluate)(jnp.asarray(ratios)))


def draw_allocations(pipe, n, density, seed):
  """``n`` allocations from the agent's initial policy, plus the uniform one last."""
  rc, cfg = pipe.rc, pipe.rc.ppo
  agent = ppo.init_agent(jax.random.PRNGKey(seed), pipe.info.num_layers, cfg)
  obs = jnp.zeros((pipe.info.num_layers, ppo.OBS_DIM))
  u = cfg.policy_std * jax.random.normal(jax.random.PRNGKey(seed + 1), (n, pipe.info.num_layers))
  u = u + ppo.mode_offsets(agent.params, obs, cfg)[None]
  d = density - budget.rounding_slack(pipe.info.sizes)
  ratios = ppo.offsets_to_ratios(u, pipe.info.sizes, d, rc.rho_min)
  uniform = budget.fit_to_budget(jnp.ones(pipe.info.num_layers), pipe.info.sizes, d, rc.rho_min)
  return np.concatenate([np.asarray(ratios), np.asarray(uniform)[None]])


def spearman_ci(x, y, seed=0, resamples=2000):
  """95% percentile bootstrap CI of Spearman's rho, the pairs resampled with replacement
  (resamples whose rho is undefined — a constant input — are left out)."""
  x, y = np.asarray(x), np.asarray(y)
  rng = np.random.default_rng(seed)
  rhos = []
  for _ in range(resamples):
    i = rng.integers(0, x.size, x.size)
    if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
      rhos.append(stats.spearmanr(x[i], y[i])[0])
  lo, hi = np.percentile(rhos, [2.5, 97.5])
  return [float(lo), float(hi)]


def run_model(name, args):
  over = {**MODELS[name], "method": "arsp", "seed": args.seed,
          "arsp.target_sparsity": args.sparsity, "finetune.epochs": args.finetune_epochs,
          "epochs": args.dense_epochs}  # fmt: skip
  cfg = configs.apply_overrides(configs.get_config("fashion_mnist"), over)
  configs.validate(cfg)
  pipe = loop.Pipeline(cfg, "/tmp/unused", progress=False)
  t0 = time.time()
  dense = train_epochs(pipe, pipe.fresh_state("dense"), "dense", args.dense_epochs, args.seed)
  dense_acc = test_accuracy(pipe, dense)
  dense = jax.device_get(dense)
  print(f"[{name}] dense {dense_acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
  ratios = draw_allocations(pipe, args.allocations, 1 - args.sparsity, args.seed)
  scored = rewards_of(pipe, dense, ratios)
  rows = []
  for i, r in enumerate(ratios):
    accs = [finetune(pipe, dense, r, args.finetune_epochs, 100 + s) for s in range(args.seeds)]
    diff = scored["correct"][i] - scored["correct"][-1]  # paired, same reward images
    rows.append({
      "keep_ratios": [float(x) for x in r], "uniform": i == len(ratios) - 1,
      "reward": float(scored["accuracy"][i]), "reward_loss": float(scored["loss"][i]),
      "finetuned_accuracy": float(np.mean(accs)), "finetuned_accuracies": accs,
      "paired_se_vs_uniform": float(np.std(diff, ddof=1) / np.sqrt(diff.size)),
    })  # fmt: skip
    print(f"[{name}] {i + 1}/{len(ratios)} ratios {np.round(r, 3)} reward {rows[-1]['reward']:.4f}"
          f" fine-tuned {rows[-1]['finetuned_accuracy']:.4f}", flush=True)  # fmt: skip
  x = [r["reward"] for r in rows]
  xl = [-r["reward_loss"] for r in rows]
  y = [r["finetuned_accuracy"] for r in rows]
  out = {
    "model": name, "hidden": list(cfg.model_kwargs.get("hidden", (1024, 1024))),
    "dense_test_accuracy": dense_acc, "rows": rows,
    "target": "held-out validation accuracy after fine-tuning (mean over --seeds data orders)",
    "spearman_accuracy_reward": float(stats.spearmanr(x, y)[0]),
    "spearman_accuracy_reward_ci95": spearman_ci(x, y),
    "spearman_loss_reward": float(stats.spearmanr(xl, y)[0]),
    "spearman_loss_reward_ci95": spearman_ci(xl, y),
    "finetuned_spread": float(np.max(y) - np.min(y)),
    "median_paired_se": float(np.median([r["paired_se_vs_uniform"] for r in rows[:-1]])),
    "target_ceiling": target_ceiling([r["finetuned_accuracies"] for r in rows]),
    "seconds": time.time() - t0,
  }  # fmt: skip
  return out


def study_runs(study_dir, sparsity, method_prefix):
  """{method: {seed: (run directory, final keep ratios [L])}} of a study's finished runs."""
  with open(os.path.join(study_dir, "runs.csv")) as f:
    rows = [r for r in csv.DictReader(f) if r["status"] == "done"]
  keys = [k for k in (rows[0] if rows else {}) if k.startswith("keep_")]
  out: dict = {}
  for r in rows:
    if r["method"].startswith(method_prefix) and abs(float(r["target_sparsity"]) - sparsity) < 1e-9:
      run_dir = os.path.join(study_dir, "runs", r["run"])
      ratios = np.asarray([float(r[k]) for k in keys if r[k] != ""])
      out.setdefault(r["method"], {})[int(r["seed"])] = (run_dir, ratios)
  return dict(sorted(out.items()))


def target_ceiling(per_seed) -> dict:
  """How well *any* reward could rank the allocations: the target (the mean over seeds of each
  allocation's held-out accuracy) is itself noisy. ``per_seed``: one row per allocation, one
  column per seed. Its reliability is the mean Spearman between two seeds' rankings, stepped up
  to the mean of k seeds (Spearman-Brown, k r / (1 + (k - 1) r)); a reward that ranked the
  allocations' true accuracies perfectly would correlate with the target by about the square
  root of that (the attenuation ceiling). None with fewer than 2 seeds."""
  a = np.asarray(per_seed, dtype=float)
  k = a.shape[1] if a.ndim == 2 else 1
  if k < 2:
    return {"split_half_spearman": None, "reliability": None, "ceiling": None}
  r = float(np.mean([stats.spearmanr(a[:, i], a[:, j])[0] for i in range(k) for j in range(i)]))
  rel = k * r / (1 + (k - 1) * r) if r > -1 / (k - 1) else 0.0
  return {
    "split_half_spearman": r,
    "reliability": float(rel),
    "ceiling": float(np.sqrt(max(rel, 0))),
  }


PER_SEED_KEYS = ("heldout_val_accuracies", "finetuned_accuracies")


def add_ceiling(path: str) -> dict:
  """Adds ``target_ceiling`` to a result file (``--ceiling_of``; study mode's per-seed held-out
  accuracies, or model mode's per-data-order ones) and rewrites it."""
  with open(path) as f:
    res = json.load(f)
  key = next((k for k in PER_SEED_KEYS if res.get("rows") and k in res["rows"][0]), None)
  if key is None:
    sys.exit(f"{path}: no rows with per-seed accuracies ({' or '.join(PER_SEED_KEYS)}); "
             "is it a bench/reward.py result?")  # fmt: skip
  res["target_ceiling"] = target_ceiling([r[key] for r in res["rows"]])
  write_json(res, path)
  return res


def run_study(name, args):
  """The reward of a study's fine-tuned allocations (each seed's from its own dense start and
  validation split) against their held-out validation accuracy."""
  runs = study_runs(args.from_study, args.sparsity, args.method_prefix)
  seeds = sorted({s for per in runs.values() for s in per})
  runs = {m: per for m, per in runs.items() if set(per) == set(seeds)}  # every seed, or none
  if len(runs) < 3:
    sys.exit(f"{args.from_study}: fewer than 3 {args.method_prefix}* allocations finished at "
             f"sparsity {args.sparsity} for every seed {seeds}")  # fmt: skip
  t0 = time.time()
  methods = list(runs)
  reward, loss, target = {}, {}, {}
  for seed in seeds:
    over = {**MODELS[name], "method": "arsp", "arsp.target_sparsity": args.sparsity, "seed": seed}
    over.update(configs.parse_sets(args.set))
    cfg = configs.apply_overrides(configs.get_config("fashion_mnist"), over)
    configs.validate(cfg)
    pipe = loop.Pipeline(cfg, "/tmp/unused", progress=False)
    dense, _ = resume.restore_init_from(
      pipe, os.path.join(args.from_study, "runs", f"dense_s{seed}")
    )
    ratios = np.stack([runs[m][seed][1] for m in methods])
    scored = rewards_of(pipe, jax.device_get(dense), ratios)
    reward[seed], loss[seed] = scored["accuracy"], scored["loss"]
    target[seed] = []
    for m in methods:
      run_pipe, state, _ = evaluate.load_run(runs[m][seed][0])
      if run_pipe.cfg.seed != seed:
        sys.exit(f"{runs[m][seed][0]}: seed {run_pipe.cfg.seed}, expected {seed}")
      exclude = args.heldout_excludes or cfg.arsp.reward_size
      target[seed].append(heldout_accuracy(run_pipe, state, exclude))
    print(f"[{name}] seed {seed}: {len(methods)} rewards and held-out accuracies "
          f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
  rows = []
  for i, m in enumerate(methods):
    rows.append({
      "method": m, "keep_ratios": [float(x) for x in np.mean([runs[m][s][1] for s in seeds], 0)],
      "rewards": [float(reward[s][i]) for s in seeds],
      "reward_losses": [float(loss[s][i]) for s in seeds],
      "heldout_val_accuracies": [target[s][i] for s in seeds],
      "finetuned_accuracy": float(np.mean([target[s][i] for s in seeds])),
    })  # fmt: skip
  y = [r["finetuned_accuracy"] for r in rows]
  out = {"model": name, "from_study": args.from_study, "seeds": seeds, "target": "held-out "
         "validation accuracy of each run's final checkpoint (mean over seeds)",
         "sparsity": args.sparsity, "allocations": len(rows), "rows": rows,
         "finetuned_spread": float(np.max(y) - np.min(y)), "seconds": time.time() - t0}  # fmt: skip
  for label, x in (
    ("accuracy_reward", [np.mean(r["rewards"]) for r in rows]),
    ("loss_reward", [-np.mean(r["reward_losses"]) for r in rows]),
  ):
    out[f"spearman_{label}"] = float(stats.spearmanr(x, y)[0])
    out[f"spearman_{label}_ci95"] = spearman_ci(x, y)
  # within each seed: the reward from that seed's dense start against that seed's runs
  out["spearman_accuracy_reward_per_seed"] = [
    float(stats.spearmanr(reward[s], target[s])[0]) for s in seeds
  ]
  out["target_ceiling"] = target_ceiling([r["heldout_val_accuracies"] for r in rows])
  return out


def run_rescore(name, args):
  """Another reward variant (``--set``) for the allocations of an earlier ``run_model`` file,
  from the same dense start (``--dense_workdir``, e.g. a study's ``runs/dense_s0`` trained with
  the same model, seed and epochs), against that file's held-out targets: no fine-tuning."""
  with open(args.rescore) as f:
    old = json.load(f)
  over = {**MODELS[name], "method": "arsp", "seed": old["settings"]["seed"],
          "arsp.target_sparsity": old["settings"]["sparsity"]}  # fmt: skip
  over.update(configs.parse_sets(args.set))
  cfg = configs.apply_overrides(configs.get_config("fashion_mnist"), over)
  configs.validate(cfg)
  if cfg.arsp.reward_size > old["settings"]["reward_size"]:
    sys.exit("the variant's reward images would overlap the file's held-out target images")
  pipe = loop.Pipeline(cfg, "/tmp/unused", progress=False)
  dense, _ = resume.restore_init_from(pipe, args.dense_workdir)
  dense_acc = test_accuracy(pipe, step_lib.replicate(dense, pipe.mesh))
  if abs(dense_acc - old["dense_test_accuracy"]) > 1e-9:
    sys.exit(
      f"{args.dense_workdir}: dense test accuracy {dense_acc}, the file's {old['dense_test_accuracy']}"
    )
  ratios = np.asarray([r["keep_ratios"] for r in old["rows"]])
  scored = rewards_of(pipe, jax.device_get(dense), ratios)
  y = [r["finetuned_accuracy"] for r in old["rows"]]
  out = {"model": name, "rescore_of": args.rescore, "dense_workdir": args.dense_workdir,
         "target": old.get("target"), "hidden": old["hidden"], "rows": [
           dict(r, reward=float(scored["accuracy"][i]), reward_loss=float(scored["loss"][i]))
           for i, r in enumerate(old["rows"])], "finetuned_spread": old["finetuned_spread"],
         "median_paired_se": old["median_paired_se"]}  # fmt: skip
  for label, x in (("accuracy_reward", scored["accuracy"]), ("loss_reward", -scored["loss"])):
    out[f"spearman_{label}"] = float(stats.spearmanr(x, y)[0])
    out[f"spearman_{label}_ci95"] = spearman_ci(x, y)
  out["spearman_loss_reward_with_rescored"] = rescore_agreement(old["rows"], out["rows"])
  return out


def rescore_agreement(old_rows, new_rows) -> float:
  """Spearman between two rewards (minus the loss) of the same allocations: high while both miss
  the target means they share a bias (or the reward images' noise), not the recovery's noise."""
  return float(stats.spearmanr([r["reward_loss"] for r in old_rows],
                               [r["reward_loss"] for r in new_rows])[0])  # fmt: skip


def main():
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--models", default="mlp,deep")
  ap.add_argument("--allocations", type=int, default=12)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--sparsity", type=float, default=0.9)
  ap.add_argument("--dense_epochs", type=int, default=10)
  ap.add_argument("--finetune_epochs", type=int, default=10)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="bench/results")
  ap.add_argument("--from_study", default="", help="a study's directory (see above)")
  ap.add_argument("--method_prefix", default="random_alloc", help="its methods to score")
  ap.add_argument(
    "--heldout_excludes", type=int, default=0, help="reward-set size left out of the target"
  )
  ap.add_argument(
    "--set", action="append", default=[], help="key=value: a reward variant (study mode)"
  )
  ap.add_argument("--tag", default="", help="suffix of the output file (study, rescore modes)")
  ap.add_argument("--rescore", default="", help="a run_model JSON whose allocations to rescore")
  ap.add_argument("--dense_workdir", default="", help="--rescore: the same dense start")
  ap.add_argument(
    "--ceiling_of", nargs="*", default=[], help="study-mode JSONs: add target_ceiling, rewrite"
  )
  args = ap.parse_args()
  for path in args.ceiling_of:
    c = add_ceiling(path)["target_ceiling"]
    print(f"{path}: target split-half Spearman {c['split_half_spearman']:.3f}, reliability "
          f"{c['reliability']:.3f}, ceiling {c['ceiling']:.3f}")  # fmt: skip
  if args.ceiling_of:
    return
  os.makedirs(args.out, exist_ok=True)
  for name in args.models.split(","):
    if args.rescore:
      res = run_rescore(name, args)
      path = os.path.join(args.out, f"reward_{name}_{args.tag or 'rescored'}.json")
      write_result(res, args, path)
      print(f"[{name}] rescored: Spearman {res['spearman_accuracy_reward']:.3f} "
            f"CI {np.round(res['spearman_accuracy_reward_ci95'], 3)}; -loss "
            f"{res['spearman_loss_reward']:.3f} -> {path}")  # fmt: skip
      continue
    res = run_study(name, args) if args.from_study else run_model(name, args)
    if args.from_study:
      tag = f"_{args.tag}" if args.tag else ""
      path = os.path.join(args.out, f"reward_{name}_study_{args.sparsity:g}{tag}.json")
    else:
      path = os.path.join(args.out, f"reward_{name}.json")
    write_result(res, args, path)
    print(f"[{name}] {len(res['rows'])} allocations, fine-tuned spread "
          f"{100 * res['finetuned_spread']:.2f} pts: Spearman(reward, fine-tuned) = "
          f"{res['spearman_accuracy_reward']:.3f} CI {np.round(res['spearman_accuracy_reward_ci95'], 3)}; "
          f"with -loss {res['spearman_loss_reward']:.3f} "
          f"CI {np.round(res['spearman_loss_reward_ci95'], 3)} -> {path}")  # fmt: skip
    if res.get("target_ceiling", {}).get("ceiling") is not None:
      print(f"[{name}] the target's own ceiling: {res['target_ceiling']['ceiling']:.3f}")


def write_result(res: dict, args, path: str) -> None:
  """``res`` with the run's settings (the reward's, from the configuration it ran) to ``path``."""
  base = configs.apply_overrides(configs.get_config("fashion_mnist"), configs.parse_sets(args.set))
  keys = ("recovery_steps", "recovery_batch", "recovery_lr", "reward_size", "calib_size",
          "reward_metric")  # fmt: skip
  res["settings"] = {**vars(args), "cpu": cpu_model(), "jax": jax.__version__,
                     **{k: base.arsp[k] for k in keys}}  # fmt: skip
  write_json(res, path)


def write_json(res: dict, path: str) -> None:
  """``res`` to ``path`` atomically (a temporary file, then a rename)."""
  with open(path + ".tmp", "w") as f:
    json.dump(res, f, indent=1)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  main()
