"""Baselines and ablations (methods.py): exact sparsity, determinism, schedules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax import configs as config_lib
from arsp_jax.pruning import methods, rounds
from arsp_jax.train import loop, phases
from arsp_jax.train import round as round_lib
from arsp_jax.train.state import flatten
from tests.util import tiny_config

TARGET = 0.8
#: Enough rounds for the search schedule: 2 budget rounds, 1 search round after, 7 in all.
SEARCH_KW = {"arsp.search_after_budget": 1, "arsp.epochs": 4, "arsp.budget_fraction": 0.25}


def _round_fn(method, seed=0, **kw):
  return _build(method, seed, tuple(sorted(kw.items())))


@functools.cache
def _build(method, seed, kw):
  """(pipeline, initial pruning-phase state, jitted round); cached: compiling is the slow part."""
  pipe = loop.Pipeline(
    tiny_config(method=method, seed=seed, **{"arsp.target_sparsity": TARGET}, **dict(kw)),
    "/tmp/unused",
    progress=False,
  )
  state = pipe.fresh_state("arsp")
  # Non-trivial gradient statistics, so that the taylor score ranks something.
  rng = np.random.default_rng(seed)
  state = state.replace(
    grad_ema={
      p: jnp.asarray(rng.random(np.shape(v)), jnp.float32) for p, v in state.grad_ema.items()
    }
  )
  fn = jax.jit(functools.partial(round_lib.pruning_round, pipe.model, pipe.info, pipe.rc))
  return pipe, state, fn


def _counts(masks, info):
  flat = flatten(jax.device_get(masks))
  return {p: int(np.asarray(flat[p]).sum()) for p in info.paths}


def test_registry_covers_the_issue_methods():
  for name in (
    "arsp",
    "arsp_fixed",
    "arsp_random_search",
    "random",
    "magnitude",
    "global_magnitude",
    "taylor",
    "gmp",
    "control",
    "dense",
  ):
    assert name in methods.METHODS
  assert methods.get("dense") is None
  with pytest.raises(config_lib.ConfigError, match="Unknown --method"):
    config_lib.validate(tiny_config(method="snip"))


@pytest.mark.parametrize("method", ["random", "magnitude", "taylor", "gmp", "arsp_fixed"])
def test_layerwise_methods_reach_the_target_in_every_layer(method):
  pipe, state, fn = _round_fn(method)
  aux = pipe.aux_batches()
  # One-shot methods prune to the target in their first round; gradual ones after
  # budget_rounds rounds.
  for _ in range(pipe.rc.budget_rounds):
    state, m = fn(state, aux)
  counts = _counts(state.masks, pipe.info)
  for p, n in zip(pipe.info.paths, pipe.info.sizes):
    assert counts[p] == round((1 - TARGET) * n), (p, counts[p], n)


def test_global_magnitude_reaches_the_target_overall_with_uneven_layers():
  pipe, state, fn = _round_fn("global_magnitude")
  state, m = fn(state, pipe.aux_batches())
  counts = _counts(state.masks, pipe.info)
  assert sum(counts.values()) == round((1 - TARGET) * pipe.info.total)
  ratios = np.asarray(m["keep_ratios"])
  np.testing.assert_allclose(
    ratios, [counts[p] / n for p, n in zip(pipe.info.paths, pipe.info.sizes)], rtol=1e-6
  )


def test_global_magnitude_keeps_the_largest_normalised_scores():
  pipe, state, fn = _round_fn("global_magnitude")
  state, _ = fn(state, pipe.aux_batches())
  flat_p = flatten(jax.device_get(state.params))
  flat_m = flatten(jax.device_get(state.masks))
  norm = np.concatenate(
    [np.abs(flat_p[p]).ravel() / np.abs(flat_p[p]).mean() for p in pipe.info.paths]
  )
  kept = np.concatenate([np.asarray(flat_m[p]).ravel() for p in pipe.info.paths]) > 0
  assert norm[kept].min() >= norm[~kept].max() - 1e-6


def test_masks_are_deterministic_from_the_seed():
  def masks_of(seed):
    pipe, state, fn = _round_fn("random", seed=seed)
    state, _ = fn(state, pipe.aux_batches())
    return jax.device_get(flatten(state.masks))

  a, b, c = masks_of(0), masks_of(0), masks_of(1)
  for p in a:
    np.testing.assert_array_equal(a[p], b[p])
  assert any(not np.array_equal(a[p], c[p]) for p in a)


def test_oneshot_masks_never_change_after_the_first_round():
  pipe, state, fn = _round_fn("magnitude")
  aux = pipe.aux_batches()
  state, _ = fn(state, aux)
  first = jax.device_get(state.masks)
  # Move the weights so that a new magnitude ranking would differ.
  state = state.replace(params=jax.tree.map(lambda x: -x[::-1] if x.ndim == 2 else x, state.params))
  for _ in range(3):
    state, _ = fn(state, aux)
  jax.tree.map(np.testing.assert_array_equal, first, jax.device_get(state.masks))


def test_gmp_follows_the_cubic_schedule_round_by_round():
  pipe, state, fn = _round_fn("gmp", **{"arsp.budget_fraction": 1.0})
  rc = pipe.rc
  aux = pipe.aux_batches()
  for r in range(rc.budget_rounds):
    state, m = fn(state, aux)
    frac = min(1.0, (r + 1) / rc.budget_rounds)
    want = (1 - TARGET) + TARGET * (1 - frac) ** 3
    np.testing.assert_allclose(np.asarray(m["keep_ratios"]), want, rtol=1e-6)


def test_cubic_schedule_matches_its_formula():
  rc = rounds.RoundConfig(target_density=0.1, budget_rounds=4)
  got = [float(rounds.budget_density(jnp.float32(r), rc)) for r in (0, 1, 2, 3, 10)]
  # d_t = d_f + (1 - d_f) (1 - (t+1)/R)^3, held at d_f after R rounds (Zhu & Gupta 2017).
  np.testing.assert_allclose(
    got, [0.1 + 0.9 * 0.75**3, 0.1 + 0.9 * 0.5**3, 0.1 + 0.9 * 0.25**3, 0.1, 0.1], rtol=1e-6
  )


@pytest.mark.slow
def test_random_search_stays_within_the_budget_and_explores():
  pipe, state, fn = _round_fn("arsp_random_search")
  aux = pipe.aux_batches()
  seen = []
  for _ in range(pipe.rc.budget_rounds + 3):
    state, m = fn(state, aux)
    seen.append(np.asarray(m["keep_ratios"]))
  sizes = np.asarray(pipe.info.sizes, np.float64)
  final_density = float(m["new_density"])
  assert final_density <= 1 - TARGET + 1e-6
  assert float(m["controller"]["candidate_reward_std"]) > 0  # its candidates differ
  assert any(not np.allclose(a, b) for a, b in zip(seen, seen[1:]))
  assert np.isfinite(float(state.agent["best_reward"]))
  assert (seen[-1] * sizes).sum() / sizes.sum() <= 1 - TARGET + 1e-6


@pytest.mark.xdist_group("search_schedule")  # one worker: one compile of SEARCH_KW's round
@pytest.mark.parametrize(
  "method", ["arsp", pytest.param("arsp_random_search", marks=pytest.mark.slow)]
)
def test_search_stops_after_the_budget_plus_search_after_budget_rounds(method):
  """The searchers score candidates in the first ``budget_rounds + search_after_budget`` rounds
  (and their best reward moves); later rounds score none and apply the last allocation."""
  pipe, state, fn = _round_fn(method, **SEARCH_KW)
  rc, aux = pipe.rc, pipe.aux_batches()
  assert rc.search_rounds == rc.budget_rounds + 1 < rc.total_rounds
  scored, ratios = [], []
  for _ in range(rc.search_rounds + 2):
    state, m = fn(state, aux)
    scored.append(float(m["controller"]["candidate_reward_std"]) > 0)
    ratios.append(np.asarray(m["keep_ratios"]))
  assert scored == [True] * rc.search_rounds + [False, False]
  np.testing.assert_allclose(ratios[-1], ratios[-2], rtol=1e-6)
  assert np.isfinite(float(m["controller"]["best_reward"]))


def test_control_keeps_every_connection():
  pipe, state, fn = _round_fn("control")
  state, m = fn(state, pipe.aux_batches())
  assert float(m["new_density"]) == 1.0


def test_fixed_target_methods_need_a_target():
  cfg = tiny_config(method="magnitude", **{"arsp.target_sparsity": -1.0})
  with pytest.raises(config_lib.ConfigError, match="fixed --target_sparsity"):
    phases.round_config(cfg, 8)


@pytest.mark.parametrize("rho", [[0.9, 0.5, 0.05], [0.01, 0.02, 0.03], [1.0, 1.0, 1.0]])
def test_exact_budget_scales_ratios_up_or_down_to_the_density(rho):
  from arsp_jax.pruning import budget

  sizes = np.array([1000.0, 5000.0, 200.0])
  got = np.asarray(budget.fit_to_budget(jnp.asarray(rho), jnp.asarray(sizes), 0.2, 0.02))
  assert (got >= 0.02 - 1e-7).all() and (got <= 1.0).all()
  assert abs((got * sizes).sum() / sizes.sum() - 0.2) < 1e-4
  unclipped = (got > 0.02 + 1e-6) & (got < 1 - 1e-6)
  if unclipped.sum() >= 2:  # the agent's allocation is kept: ratios scale by one factor
    r = got[unclipped] / np.asarray(rho)[unclipped]
    np.testing.assert_allclose(r, r[0], rtol=1e-4)


@pytest.mark.xdist_group("search_schedule")
def test_arsp_meets_the_target_exactly_after_the_budget_rounds():
  # the search schedule's configuration (one compile for both tests): the last rounds apply
  pipe, state, fn = _round_fn("arsp", **SEARCH_KW)
  aux = pipe.aux_batches()
  for _ in range(pipe.rc.budget_rounds + 2):
    state, m = fn(state, aux)
  _assert_exact_density(float(m["new_density"]), pipe.info)


def _assert_exact_density(density, info):
  """The budget is met from both sides: rounding k = round(rho * n) moves each layer by at most
  half a connection, and the projection leaves room for that (budget.rounding_slack)."""
  slack = 0.5 * info.num_layers / info.total
  assert 1 - TARGET - 2 * slack - 1e-7 <= density <= 1 - TARGET + slack + 1e-7, density


def test_taylor_baseline_ranks_by_weight_times_gradient_not_magnitude():
  # The one-shot taylor baseline needs per-weight gradient statistics even when --score is
  # magnitude (the default): its masks must differ from magnitude's.
  pt, st, ft = _round_fn("taylor", **{"arsp.score": "magnitude"})
  pm, sm, fm = _round_fn("magnitude", **{"arsp.score": "magnitude"})
  assert pt.rc.per_weight_grads and pt.rc.score == "taylor"
  st, _ = ft(st, pt.aux_batches())
  sm, _ = fm(sm, pm.aux_batches())
  a, b = flatten(jax.device_get(st.masks)), flatten(jax.device_get(sm.masks))
  assert any(not np.array_equal(a[p], b[p]) for p in a)
  # ...and keep exactly the largest |w| * EMA|g| in every layer (random masks would not).
  flat_p = flatten(jax.device_get(st.params))
  for p in pt.info.paths:
    score = np.abs(flat_p[p]) * np.asarray(st.grad_ema[p])
    kept = np.asarray(a[p]) > 0
    assert score[kept].min() >= score[~kept].max()


@pytest.mark.parametrize(
  "method",
  ["erk", "lamp"]
  + [pytest.param(m, marks=pytest.mark.slow) for m in ("uniform_plus", "global_gmp")],
)
def test_allocation_rules_meet_the_budget_with_their_own_ratios(method):
  pipe, state, fn = _round_fn(method, **{"model_kwargs.hidden": (32, 16, 32)})
  aux = pipe.aux_batches()
  for _ in range(pipe.rc.budget_rounds):
    state, m = fn(state, aux)
  _assert_exact_density(float(m["new_density"]), pipe.info)
  ratios = np.asarray(m["keep_ratios"])
  counts = _counts(state.masks, pipe.info)
  for i, (p, n) in enumerate(zip(pipe.info.paths, pipe.info.sizes)):
    assert counts[p] == round(float(ratios[i]) * n)  # masks follow the rule's ratios exactly
  if method != "global_gmp":  # (global on freshly initialised layers is near uniform)
    assert ratios.max() - ratios.min() > 0.05  # not the uniform allocation


def test_erk_density_follows_its_formula_where_no_layer_saturates():
  from arsp_jax.pruning import allocation

  shapes = [(784, 32), (32, 16), (16, 32)]
  sizes = [784 * 32, 32 * 16, 16 * 32]
  got = np.asarray(allocation.erk(shapes, sizes, 0.05, 0.001))
  raw = np.array([(a + b) / (a * b) for a, b in shapes])
  free = got < 1 - 1e-6
  np.testing.assert_allclose(got[free] / raw[free], (got[free] / raw[free])[0], rtol=1e-4)
  assert abs((got * sizes).sum() / sum(sizes) - 0.05) < 1e-4


def test_lamp_scores_match_their_definition():
  from arsp_jax.pruning import allocation

  w = np.array([0.5, -0.1, 0.3, 0.2], np.float32)
  got = np.asarray(allocation.lamp_scores(np.abs(w)))
  sq = np.sort(w**2)
  want_sorted = [sq[i] / sq[i:].sum() for i in range(4)]
  np.testing.assert_allclose(np.sort(got), np.sort(want_sorted), rtol=1e-6)
  assert got[0] == 1.0  # the largest weight of a layer always has LAMP score 1


def test_uniform_plus_caps_a_first_layer_too_large_to_stay_dense():
  from arsp_jax.pruning import allocation

  sizes = [803_000, 1_000_000, 65_000, 65_000]
  got = np.asarray(allocation.uniform_plus(sizes, 0.1, 0.02))
  kept = 0.1 * sum(sizes)
  assert got[0] == pytest.approx(kept / 2 / sizes[0], rel=1e-3)  # half the budget, not dense
  assert got[-1] >= 0.2 - 1e-6  # the last layer at most 80% sparse
  assert abs((got * sizes).sum() / sum(sizes) - 0.1) < 1e-4


@pytest.mark.parametrize(
  "rule,twin",
  list(methods.SAMPLED_TWINS[:2])
  + [pytest.param(*p, marks=pytest.mark.slow) for p in methods.SAMPLED_TWINS[2:]],
)
def test_each_rules_sampled_twin_keeps_its_ratios_and_samples_its_masks(rule, twin):
  """The sampling ablation of every rule (gmp -> arsp_fixed, erk -> erk_sampled, ...): the
  rule's keep ratios exactly, masks drawn as ARSP draws them (reservoir samples, not the top-k:
  the masks must differ)."""
  hidden = {"model_kwargs.hidden": (32, 16, 32), "arsp.score": "magnitude"}
  pr, sr, fr = _round_fn(rule, **hidden)
  pt, st, ft = _round_fn(twin, **hidden)
  assert pt.rc.temperature > 0 and pr.rc.temperature == 0
  sr, mr = fr(sr, pr.aux_batches())
  st, mt = ft(st, pt.aux_batches())
  np.testing.assert_allclose(np.asarray(mt["keep_ratios"]), np.asarray(mr["keep_ratios"]))
  a, b = flatten(jax.device_get(sr.masks)), flatten(jax.device_get(st.masks))
  assert any(not np.array_equal(a[p], b[p]) for p in a)
  assert methods.get(twin).controller == methods.get(rule).controller


def test_rho_min_zero_is_derived_from_the_target():
  from arsp_jax.pruning import budget

  assert budget.resolve_rho_min(0.0, 0.9) == pytest.approx(0.02)
  assert budget.resolve_rho_min(0.0, 0.95) == pytest.approx(0.02)
  assert budget.resolve_rho_min(0.0, 0.99) == pytest.approx(0.004)
  assert budget.resolve_rho_min(0.0, 0.999) == pytest.approx(0.0004)
  assert budget.resolve_rho_min(0.0, -1.0) == 0.02  # budget off
  assert budget.resolve_rho_min(0.05, 0.9) == 0.05  # set by hand: as set
  # Every target below 1 is reachable with the default, and validate accepts it.
  config_lib.validate(tiny_config(method="erk", **{"arsp.target_sparsity": 0.995}))
  pipe = loop.Pipeline(
    tiny_config(method="erk", **{"arsp.target_sparsity": 0.995}), "/tmp/unused", progress=False
  )
  assert pipe.rc.rho_min == pytest.approx(0.002)


@pytest.mark.slow
def test_random_alloc_is_one_allocation_per_alloc_seed_whatever_the_run_seed():
  """The headroom probe: an allocation is fixed by --arsp.alloc_seed, meets the budget, differs
  between alloc seeds and is the same under another training seed."""
  hidden = {"model_kwargs.hidden": (32, 16, 32)}

  def final_ratios(seed, alloc_seed):
    pipe, state, fn = _round_fn(
      "random_alloc", seed=seed, **hidden, **{"arsp.alloc_seed": alloc_seed}
    )
    aux = pipe.aux_batches()
    for _ in range(pipe.rc.budget_rounds):
      state, m = fn(state, aux)
    _assert_exact_density(float(m["new_density"]), pipe.info)
    return np.asarray(m["keep_ratios"])

  a, b, c = final_ratios(0, 1), final_ratios(1, 1), final_ratios(0, 2)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  assert np.abs(a - c).max() > 0.05
  assert max(np.ptp(a), np.ptp(c)) > 0.05  # not the uniform allocation


def test_forward_passes_in_image_chunks():
  """arsp.eval_batch: the round's forward passes in chunks of images. Logits are those of one
  pass (image order kept); re-estimated batchnorm statistics are the whole set's moments in the
  first batchnorm layer (deeper layers see inputs normalised per chunk, so only close)."""
  from arsp_jax.train import model_fns

  pipe, state, _ = _round_fn("gmp", **{"arsp.score": "magnitude"})
  aux = pipe.aux_batches()
  images = aux["calib"][:96]
  p, bs, m = state.params, state.batch_stats, state.masks
  whole = model_fns.logits_on(pipe.model, p, bs, m, images)
  chunked = model_fns.logits_on(pipe.model, p, bs, m, images, chunk=32)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-4, atol=1e-3)
  ref = model_fns.recalibrate_batch_stats(pipe.model, p, m, bs, images)
  got = model_fns.recalibrate_batch_stats(pipe.model, p, m, bs, images, chunk=32)
  first = sorted(ref)[0]
  for k in ("mean", "var"):
    np.testing.assert_allclose(
      np.asarray(jax.tree.leaves(got[first][k])), np.asarray(jax.tree.leaves(ref[first][k])),
      rtol=1e-4, atol=1e-6,
    )  # fmt: skip
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0.2, atol=0.05)
  assert any(
    not np.allclose(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))
  )  # fmt: skip  (deeper layers: close, not equal — the test would notice a no-op)


@pytest.mark.slow  # make test-all
def test_arsp_round_with_image_chunks():
  pipe, state, fn = _round_fn("arsp", **{"arsp.eval_batch": 32})
  assert pipe.rc.eval_batch == 32
  aux = pipe.aux_batches()
  assert aux["calib"].shape[0] > 32 and aux["val_image"].shape[0] >= 32
  # The round re-estimates batchnorm in chunks: the first layer's moments are the one-pass
  # ones (same state, same calibration images), deeper layers differ (the chunks are used).
  p0, s0, f0 = _round_fn("arsp")
  s0, _ = f0(s0, p0.aux_batches())
  state, m = fn(state, aux)
  got, ref = jax.device_get(state.batch_stats), jax.device_get(s0.batch_stats)
  first = sorted(ref)[0]
  np.testing.assert_allclose(got[first]["mean"], ref[first]["mean"], rtol=1e-4, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
  assert np.isfinite(float(m["controller"]["candidate_reward_mean"]))
