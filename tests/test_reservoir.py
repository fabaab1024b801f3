"""Tests for arsp_jax.reservoir: exact k, ties, A-Res inclusion probabilities, sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from arsp_jax.pruning import reservoir as R

RATIOS = [0.0, 0.001, 0.1, 0.25, 1 / 3, 0.5, 0.77, 0.999, 1.0]


# Makes a few thousand keys span many chunks and tie blocks (the 25M-key code paths).
SMALL = R.Tuning(hist_chunk=512, count_chunk=128, tie_block=32)


def reference_topk(keys, k):
  """numpy: k largest keys, ties to the lower flat index, NaN as -inf."""
  flat = np.nan_to_num(np.asarray(keys, np.float32).reshape(-1), nan=-np.inf)
  order = np.lexsort((np.arange(flat.size), -flat))  # stable: key desc, then index asc
  mask = np.zeros(flat.size, np.float32)
  mask[order[: int(np.clip(k, 0, flat.size))]] = 1
  return mask.reshape(np.shape(keys))


def tied_keys(rng, n):
  """Keys with many ties, some -inf and -0.0/+0.0 pairs."""
  keys = rng.randint(-3, 4, size=n).astype(np.float32)
  keys[rng.rand(n) < 0.2] = -np.inf
  keys[rng.rand(n) < 0.05] = -0.0
  return keys


def expected_k(ratio, n):
  return int(np.round(np.float32(ratio) * np.float32(n)))


# ------------------------------------------------------------------------------- exact k


@pytest.mark.parametrize("n", [700, 3000])  # pairwise path, radix path
def test_exact_k_for_many_ratios(n):
  scores = jax.random.uniform(jax.random.key(0), (n,))
  for i, ratio in enumerate(RATIOS):
    mask = R.reservoir_mask(jax.random.key(i), scores, ratio)
    assert mask.dtype == jnp.float32 and mask.shape == (n,)
    assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
    k = expected_k(ratio, n)
    assert int(mask.sum()) == k and abs(k - ratio * n) <= 0.5 + 1e-6


def test_traced_ratio_one_compilation():
  traces = []

  @jax.jit
  def mask_fn(rng, scores, ratio):
    traces.append(1)
    return R.reservoir_mask(rng, scores, ratio, tuning=SMALL)

  scores = jax.random.uniform(jax.random.key(1), (40, 50))
  for ratio in RATIOS:
    mask = mask_fn(jax.random.key(2), scores, jnp.float32(ratio))
    assert int(mask.sum()) == expected_k(ratio, 2000), ratio
  assert len(traces) == 1


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("method", ["auto", "radix", "bisect", "pairwise"])
def test_topk_mask_matches_argsort_with_ties(method):
  rng = np.random.RandomState(0)
  sizes = (1, 37, 900) if method in ("auto", "pairwise") else (900,)  # one compilation each
  for n in sizes:
    for keys in (tied_keys(rng, n), rng.randn(n).astype(np.float32)):
      for k in sorted({0, 1, n // 3, n // 2, n - 1, n, n + 5, -2}):
        got = R.topk_mask(jnp.asarray(keys), k, method=method)
        np.testing.assert_array_equal(got, reference_topk(keys, k), err_msg=f"{n} {k}")


@pytest.mark.parametrize("method", ["radix", "bisect"])
def test_topk_mask_many_chunks_traced_k(method):
  rng = np.random.RandomState(1)
  fn = jax.jit(functools.partial(R.topk_mask, method=method, tuning=SMALL))
  for keys in (tied_keys(rng, 3000).reshape(60, 50), rng.randn(60, 50).astype(np.float32)):
    for k in (0, 1, 499, 1500, keys.size - 1, keys.size):
      got = fn(jnp.asarray(keys), jnp.int32(k))
      np.testing.assert_array_equal(got, reference_topk(keys, k), err_msg=str(k))


def test_reservoir_mask_is_topk_of_sampling_keys():
  """The mask written over the keys' buffer chunk by chunk equals topk_mask of the keys."""
  scores = jnp.asarray(np.random.RandomState(4).randint(0, 4, size=(30, 70)), jnp.float32)
  for temperature in (0.0, 1.0):  # 0: massive ties across chunks
    for ratio in (0.1, 0.5, 0.9):
      rng = jax.random.key(7)
      mask = R.reservoir_mask(rng, scores, ratio, temperature=temperature, tuning=SMALL)
      keys = R.sampling_keys(rng, scores, temperature)
      np.testing.assert_array_equal(mask, R.topk_mask(keys, expected_k(ratio, 2100)))


def test_ties_and_negative_infinity():
  equal = jnp.full((10,), 2.5)
  np.testing.assert_array_equal(R.topk_mask(equal, 3), [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
  neg = jnp.full((900,), -jnp.inf)
  assert np.flatnonzero(np.asarray(R.topk_mask(neg, 4, method="radix"))).tolist() == [0, 1, 2, 3]
  keys = jnp.array([-jnp.inf, 1.0, jnp.nan, 1.0, -jnp.inf, 0.0, -0.0])
  np.testing.assert_array_equal(R.topk_mask(keys, 2), [0, 1, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(R.topk_mask(keys, 4), [0, 1, 0, 1, 0, 1, 1])
  np.testing.assert_array_equal(R.topk_mask(keys, 5), [1, 1, 0, 1, 0, 1, 1])


def test_ordered_bits_preserves_order():
  x = np.array([-np.inf, -3e38, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 3e38, np.inf], np.float32)
  u = np.asarray(jax.jit(R.ordered_bits)(x)).astype(np.int64)
  assert np.all(np.diff(u) >= 0) and u[4] == u[5] and len(set(u.tolist())) == 9
  assert u[0] == np.asarray(R.ordered_bits(np.float32(np.nan)))  # NaN reads as -inf


@pytest.mark.parametrize("n", [6, 3000])
def test_zero_scores_never_chosen_before_positive(n):
  rng = np.random.RandomState(2)
  scores = rng.rand(n).astype(np.float32)
  scores[rng.rand(n) < 0.5] = 0.0
  positive = scores > 0
  n_pos = int(positive.sum())
  for i, k in enumerate((n_pos // 2, n_pos, n_pos + 1, n)):
    for temperature in (1.0, 0.3, 0.0) if n < 100 else (1.0, 0.0):
      mask = np.asarray(
        R.reservoir_mask(jax.random.key(i), scores, k / n, temperature=temperature)
      ).astype(bool)
      if k <= n_pos:
        assert not mask[~positive].any()
      else:  # every positive, then zeros by lower index
        assert mask[positive].all()
        zeros = np.flatnonzero(~positive)
        assert mask[zeros[: k - n_pos]].all() and not mask[zeros[k - n_pos :]].any()


def test_sampling_keys_finite_for_positive_scores():
  scores = jnp.array([0.0, 2e-38, 1e-20, 1.0, 1e30, 3e38, -1.0, jnp.nan])
  for noise in ("hash", "threefry"):
    keys = np.asarray(R.sampling_keys(jax.random.key(0), scores, noise=noise))
    assert keys.dtype == jnp.float32
    assert np.all(np.isfinite(keys[1:6])) and np.all(np.isneginf(keys[[0, 6, 7]]))
  u = jax.jit(lambda r: R._hash_uniform(r, (200_000,)))(jax.random.key(3))
  assert float(u.min()) > 0 and float(u.max()) < 1
  assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12 / 200_000) ** 0.5


def test_temperature_zero_is_topk_by_score():
  scores = jnp.array([0.3, 0.9, 0.0, 0.9, 0.1, 0.5])
  want = reference_topk(np.asarray(scores), 3)  # 0.9, 0.9, 0.5
  np.testing.assert_array_equal(want, [0, 1, 0, 1, 0, 1])
  for i in range(3):
    got = R.reservoir_mask(jax.random.key(i), scores, 0.5, temperature=0.0)
    np.testing.assert_array_equal(got, want)
  traced = jax.jit(lambda t: R.reservoir_mask(jax.random.key(0), scores, 0.5, temperature=t))
  np.testing.assert_array_equal(traced(jnp.float32(0.0)), want)


# ----------------------------------------------------------------- inclusion probabilities


def test_inclusion_probabilities_exact_values():
  np.testing.assert_allclose(R.inclusion_probabilities([4, 1, 1], 1), [2 / 3, 1 / 6, 1 / 6])
  np.testing.assert_allclose(R.inclusion_probabilities([4, 1, 1], 2), [14 / 15, 8 / 15, 8 / 15])
  p = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.0])
  for k in range(7):
    q = R.inclusion_probabilities(p, k)
    assert abs(q.sum() - k) < 1e-12
    assert np.all(np.diff(q[:5]) <= 0)  # increasing in p ...
  q = R.inclusion_probabilities(p, 3)
  assert not np.allclose(q / q.sum(), p / p.sum(), atol=0.02)  # ... not proportional
  np.testing.assert_allclose(R.inclusion_probabilities([1, 0, 0], 2), [1, 1, 0])


@pytest.mark.parametrize(
  "p, k, temperature, noise",
  [
    ([4.0, 1.0, 1.0, 0.5, 2.0, 3.0], 2, 1.0, "hash"),
    ([4.0, 1.0, 1.0, 0.5, 2.0, 3.0], 4, 1.0, "hash"),
    ([4.0, 1.0, 1.0, 0.5, 2.0, 3.0], 3, 1.0, "threefry"),
    ([1.0, 2.0, 0.0, 3.0], 2, 0.5, "hash"),  # weights p**2, a zero weight
    ([0.2, 0.4, 0.8, 1.6, 3.2], 1, 2.0, "hash"),  # weights sqrt(p)
  ],
)
def test_empirical_inclusion_matches_exact(p, k, temperature, noise):
  draws = 20_000
  scores = jnp.asarray(p, jnp.float32)
  rngs = jax.random.split(jax.random.key(42), draws)
  masks = np.asarray(_sample_masks(rngs, scores, k / len(p), temperature, noise))
  assert np.all(masks.sum(axis=1) == k)
  exact = R.inclusion_probabilities(np.asarray(p) ** (1.0 / temperature), k)
  freq = masks.mean(axis=0)
  se = np.sqrt(exact * (1 - exact) / draws) + 1e-4
  assert np.all(np.abs(freq - exact) <= 4 * se), (freq, exact)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _sample_masks(rngs, scores, ratio, temperature, noise):
  def one(rng):
    return R.reservoir_mask(rng, scores, ratio, temperature=temperature, noise=noise)

  return jax.vmap(one)(rngs)


# ------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("method", ["radix", "bisect"])
def test_sharded_topk_equals_unsharded(method):
  devices = np.array(jax.devices())
  assert devices.size == 8
  mesh = Mesh(devices, ("data",))
  rng = np.random.RandomState(3)
  n = 8 * 700  # 700 keys per device: several 512-key chunks per shard

  @jax.jit
  def sharded(keys, k):
    return jax.shard_map(
      lambda x, kk: R.sharded_topk_mask(x, kk, "data", method=method, tuning=SMALL),
      mesh=mesh,
      in_specs=(P("data"), P()),
      out_specs=P("data"),
    )(keys, k)

  keys_sets = [tied_keys(rng, n), rng.randn(n).astype(np.float32)]
  keys_sets[0][: n // 2] = 1.0  # a run of ties spanning several devices
  for keys in keys_sets:
    for k in (0, 1, 17, 350, 2799, 2800, 4000, n - 1, n):
      got = sharded(jnp.asarray(keys), jnp.int32(k))
      np.testing.assert_array_equal(got, reference_topk(keys, k), err_msg=str(k))
      np.testing.assert_array_equal(got, R.topk_mask(jnp.asarray(keys), k))


# --------------------------------------------------------------------- channel granularity


def channels_kept(mask, axis):
  m = np.moveaxis(np.asarray(mask), axis, -1).reshape(-1, np.shape(mask)[axis])
  assert np.all(m == m[:1])  # whole channels: constant over the other axes
  return int(m[0].sum())


@pytest.mark.parametrize("shape", [(64, 48), (3, 3, 16, 32)])  # Dense [in,out], Conv [kh,kw,in,out]
def test_channel_granularity_removes_whole_channels(shape):
  scores = jax.random.uniform(jax.random.key(0), shape)
  c = shape[-1]
  for i, ratio in enumerate([0.0, 0.01, 0.3, 0.5, 0.9, 1.0]):
    mask = R.reservoir_mask(jax.random.key(i), scores, ratio, granularity="channel")
    assert mask.shape == shape
    want = max(round(ratio * c), 1) if ratio > 0 else 0
    assert channels_kept(mask, -1) == want
    mask8 = R.reservoir_mask(
      jax.random.key(i), scores, ratio, granularity="channel", channel_multiple=8
    )
    kept = channels_kept(mask8, -1)
    assert kept % 8 == 0 and kept <= c and (kept > 0) == (ratio > 0)
    assert abs(kept - ratio * c) <= 4 or ratio < 0.1
  mask = R.reservoir_mask(jax.random.key(0), scores, 0.5, granularity="channel", channel_axis=0)
  assert channels_kept(mask, 0) == round(0.5 * shape[0])


def test_channel_multiple_rounding():
  scores = jnp.ones((4, 10))  # C = 10, multiple 8
  kept = lambda r: channels_kept(  # noqa: E731
    R.reservoir_mask(jax.random.key(0), scores, r, granularity="channel", channel_multiple=8),
    -1,
  )
  assert [kept(r) for r in (0.0, 0.05, 0.5, 0.8, 1.0)] == [0, 8, 8, 8, 10]
  # Channel scores drive the choice at temperature 0.
  scores = jnp.array([[1.0, 5.0, 0.0, 3.0]] * 2)
  mask = R.reservoir_mask(jax.random.key(0), scores, 0.5, granularity="channel", temperature=0.0)
  np.testing.assert_array_equal(mask, [[0, 1, 0, 1]] * 2)


# ------------------------------------------------------------------------ word granularity


def words_kept(mask, word_bits):
  """Kept words per output channel of a ``[..., in, out]`` mask; asserts whole words."""
  m = np.asarray(mask)
  i, o = m.shape[-2], m.shape[-1]
  m = m.reshape(-1, i, o)
  iw = -(-i // word_bits)
  kept = np.zeros(o, int)
  for t in range(m.shape[0]):
    for j in range(iw):
      word = m[t, j * word_bits : (j + 1) * word_bits]  # [<=word_bits, O]
      assert np.all(word == word[:1]), (t, j)  # whole words
      kept += word[0].astype(int)
  return kept, m.shape[0] * iw


@pytest.mark.parametrize("shape,word_bits", [((200, 24), 64), ((3, 3, 40, 16), 32)])
def test_word_granularity_keeps_whole_words_exact_counts(shape, word_bits):
  scores = jax.random.uniform(jax.random.key(0), shape)
  traces = []

  @jax.jit
  def fn(rng, ratio):
    traces.append(1)
    return R.reservoir_mask(rng, scores, ratio, granularity="word", word_bits=word_bits)

  for i, ratio in enumerate([0.0, 0.01, 0.05, 0.3, 0.5, 0.9, 1.0]):
    mask = fn(jax.random.key(i), jnp.float32(ratio))
    kept, n_words = words_kept(mask, word_bits)
    want = int(np.round(np.float32(ratio) * np.float32(n_words)))
    want = max(want, 1) if ratio > 0 else 0
    assert np.all(kept == want), (ratio, kept, want)  # the same fan-in in every output
    static = R.reservoir_mask(
      jax.random.key(i), scores, ratio, granularity="word", word_bits=word_bits
    )
    np.testing.assert_array_equal(static, mask)  # a Python ratio gives the same words
  assert len(traces) == 1
  # Temperature 0: each output keeps its highest-scoring words.
  s = np.zeros(shape, np.float32) + 0.1
  s.reshape(-1, shape[-2], shape[-1])[0, :word_bits, :] = 5.0  # word 0 of tap 0 wins
  m = R.reservoir_mask(
    jax.random.key(0), s, 1e-3, granularity="word", word_bits=word_bits, temperature=0.0
  )
  m = np.asarray(m).reshape(-1, shape[-2], shape[-1])
  assert m[0, :word_bits].all() and m.sum() == word_bits * shape[-1]


def test_word_mask_exports_in_word_format():
  """The export recognises a word mask as fixed fan-in words (64-bit, the engine's layout)."""
  from arsp_jax.export import compress

  kernel = np.random.RandomState(0).uniform(-1, 1, (3, 3, 80, 8)).astype(np.float32)
  mask = R.reservoir_mask(jax.random.key(3), jnp.abs(kernel), 0.2, granularity="word")
  meta, arrays = compress.encode_binary(kernel, np.asarray(mask))
  assert meta["encoding"] == "word" and meta["fan_in_words"] == round(0.2 * 18)
  dec = compress.decode_binary(meta, arrays)
  expect = compress.kernel_matrix(np.where(kernel >= 0, 1.0, -1.0) * np.asarray(mask))
  np.testing.assert_array_equal(compress.effective_matrix(dec), expect)


# ----------------------------------------------------------------------- several layers


def test_reservoir_masks_dict_traced_ratios_under_jit():
  layers = {
    "dense_1/kernel": jax.random.uniform(jax.random.key(0), (30, 20)),
    "conv/kernel": jax.random.uniform(jax.random.key(1), (3, 3, 4, 16)),
    "dense_0/kernel": jax.random.uniform(jax.random.key(2), (50,)),
  }
  names = sorted(layers)  # conv, dense_0, dense_1
  traces = []

  @jax.jit
  def masks_fn(rng, ratios):
    traces.append(1)
    return R.reservoir_masks(rng, layers, ratios)

  for ratios in ([0.5, 0.1, 1.0], [0.0, 0.33, 0.77]):
    masks = masks_fn(jax.random.key(5), jnp.asarray(ratios, jnp.float32))
    assert set(masks) == set(layers)
    for name, ratio in zip(names, ratios):
      assert masks[name].shape == layers[name].shape
      assert int(masks[name].sum()) == expected_k(ratio, layers[name].size)
  assert len(traces) == 1
  # Layer i (sorted order) draws with fold_in(rng, i); dict ratios and per-layer keyword
  # arguments (a mapping) are accepted.
  rng = jax.random.key(5)
  single = R.reservoir_mask(jax.random.fold_in(rng, 2), layers["dense_1/kernel"], 0.77)
  np.testing.assert_array_equal(masks["dense_1/kernel"], single)
  mixed = R.reservoir_masks(
    rng,
    layers,
    {"conv/kernel": 0.5, "dense_0/kernel": 0.33, "dense_1/kernel": 0.77},
    granularity={"conv/kernel": "channel"} | {n: "weight" for n in names[1:]},
  )
  assert channels_kept(mixed["conv/kernel"], -1) == 8
  np.testing.assert_array_equal(mixed["dense_1/kernel"], single)
  assert int(mixed["dense_0/kernel"].sum()) == expected_k(0.33, 50)


def test_invalid_arguments():
  with pytest.raises(ValueError, match="method"):
    R.topk_mask(jnp.zeros(3), 1, method="sort")
  with pytest.raises(ValueError, match="granularity"):
    R.reservoir_mask(jax.random.key(0), jnp.ones(3), 0.5, granularity="block")
  with pytest.raises(ValueError, match="temperature"):
    R.sampling_keys(jax.random.key(0), jnp.ones(3), -1.0)
  with pytest.raises(ValueError, match="noise"):
    R.sampling_keys(jax.random.key(0), jnp.ones(3), noise="mt19937")
  with pytest.raises(ValueError, match="shape"):
    R.reservoir_masks(jax.random.key(0), {"a": jnp.ones(3)}, jnp.ones(2))
