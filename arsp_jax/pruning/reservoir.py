"""Weighted reservoir sampling masks (Efraimidis–Spirakis A-Res), exact k, jit-able.

A layer keeps a *weighted sample without replacement* of exactly ``k`` of its ``n``
connections, item ``i`` weighted by its survival score ``p_i``:

* A-Res draws ``u_i ~ U(0, 1)`` and keeps the ``k`` largest keys ``log(u_i) / p_i``.
* Ordering by ``log(u)/p`` is the same as ordering by ``log p - log(-log u)``, i.e. ``log p``
  plus standard Gumbel noise (Gumbel-top-k). That form stays finite in float32
  (``u ** (1/p)`` underflows), so it is the one used here.
* A temperature ``T`` generalises the weights to ``p = score ** (1/T)``: the key is
  ``log(score) / T + Gumbel``. ``T -> 0`` tends to deterministic top-k by score, and a
  temperature of exactly ``0`` *is* deterministic top-k (no noise); large ``T`` tends to a
  uniform random sample.

The sample is equivalent to drawing items one at a time, each with probability proportional to
its weight among the items not drawn yet. Its **inclusion probability is increasing in p, but
not proportional to it**: a heavy item cannot be included more than once, so the heaviest items
saturate towards 1 and the light ones get more than their proportional share (e.g. weights
(4, 1, 1), k = 1 -> 2/3, 1/6, 1/6, but k = 2 -> 0.933, 0.533, 0.533, not (1.33, 0.33, 0.33)).
:func:`inclusion_probabilities` computes the exact values for small ``n``.

Conventions shared by every function here:

* Zero (or negative, or NaN) scores get key ``-inf``: they are never chosen before any item with
  a positive score, and are chosen only when ``k`` exceeds the number of positive scores.
  (XLA on the CPU flushes float32 denormals, below ~1.2e-38, to zero: such scores count as 0.)
* Equal keys are broken deterministically: the item with the lower flat (row-major) index wins.
* ``k`` may be a traced int32 scalar (a keep ratio that changes inside a compiled step); it is
  clipped to ``[0, n]``. No function sorts the array or uses ``lax.top_k`` (which needs a
  static ``k``): selection finds the exact k-th largest key by radix select over an
  order-preserving uint32 image of the keys, then takes every key above it plus the first ties
  in flat index order.
* Masks are float32 arrays of 0/1 shaped like the scores.
* Inputs are checked with ``chex``: scores a floating-point array, keep ratio and temperature
  scalars (an ``AssertionError`` otherwise, also under ``jit``).

Random bits. By default the Gumbel noise comes from a counter-based integer hash (three rounds
of an invertible 32-bit mix of the flat index) keyed by the words of ``rng``
(``noise="hash"``): the same key always gives the same mask, different keys give
independent-looking masks, and it is several times cheaper on the CPU than
``jax.random.gumbel`` (threefry, ``noise="threefry"``), which dominated the cost of a whole mask
(see ``bench/masks.py``). The hash is a statistical generator, not a cryptographic one; as
with any JAX key, do not reuse the key passed here for other draws.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arsp_jax.pruning.topk import (
  DEFAULT_TUNING,
  Tuning,
  ordered_bits,
  pairwise_keep,
  select_topk,
  sharded_topk_mask,
  topk_mask,
)

Array = jax.Array

__all__ = [
  "sampling_keys",
  "topk_mask",
  "reservoir_mask",
  "reservoir_masks",
  "sharded_topk_mask",
  "inclusion_probabilities",
  "ordered_bits",
  "Tuning",
  "DEFAULT_TUNING",
]

GRANULARITIES = ("weight", "channel", "word")
_NOISES = ("hash", "threefry")


# --------------------------------------------------------------------------------------------
# Keys


def sampling_keys(
  rng: Array,
  scores: Array,
  temperature: float | Array = 1.0,
  *,
  noise: str = "hash",
) -> Array:
  """A-Res keys ``log(score) / T + Gumbel`` (the k largest keys form the sample).

  Keeping the ``k`` largest keys draws ``k`` items without replacement with weights
  ``p = score ** (1/T)``; an item's inclusion probability is increasing in ``p`` but not
  proportional to it.

  Args:
    rng: a JAX PRNG key.
    scores: survival scores, any shape; values ``<= 0`` or NaN get key ``-inf``.
    temperature: ``T >= 0``, a Python number or a traced scalar. ``0`` means deterministic
      top-k by score: the keys are then the scores themselves (no noise), ``-inf`` where not
      positive.
    noise: ``"hash"`` (default: a fast counter-based hash keyed by the key's data) or
      ``"threefry"`` (``jax.random.gumbel``). Both give exact Gumbel-top-k up to float32
      resolution; they draw different (equally distributed) samples from the same key.
  Returns:
    float32 keys shaped like ``scores``; finite wherever the score is positive.
  """
  _check_noise(noise)
  chex.assert_type(scores, float)
  chex.assert_rank(temperature, 0)
  if _is_python_number(temperature):
    return _keys_static_t(rng, scores, temperature=_check_temperature(temperature), noise=noise)
  return _keys_traced_t(rng, scores, jnp.asarray(temperature, jnp.float32), noise=noise)


def _keys(rng: Array, scores: Array, temperature: float | Array, noise: str) -> Array:
  s = jnp.asarray(scores, jnp.float32)
  positive = s > 0
  plain = jnp.where(positive, s, -jnp.inf)
  static_t = _is_python_number(temperature)
  if static_t and temperature == 0.0:
    return plain
  log_p = jnp.where(positive, jnp.log(jnp.where(positive, s, 1.0)), -jnp.inf)
  g = _gumbel(rng, s.shape, noise)
  if static_t:
    if temperature != 1.0:
      log_p = log_p / jnp.float32(temperature)
    return log_p + g
  t = jnp.asarray(temperature, jnp.float32)
  safe_t = jnp.where(t > 0, t, 1.0)
  return jnp.where(t > 0, log_p / safe_t + g, plain)


_keys_static_t = jax.jit(_keys, static_argnames=("temperature", "noise"))
_keys_traced_t = jax.jit(_keys, static_argnames=("noise",))


def _check_noise(noise: str) -> None:
  if noise not in _NOISES:
    raise ValueError(f"unknown noise {noise!r}; valid: {', '.join(_NOISES)}")


def _check_temperature(temperature: float) -> float:
  temperature = float(temperature)
  if not temperature >= 0 or math.isinf(temperature):
    raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
  return temperature


def _gumbel(rng: Array, shape: tuple[int, ...], noise: str) -> Array:
  if noise == "threefry":
    return jax.random.gumbel(rng, shape, jnp.float32)
  u = _hash_uniform(rng, shape)
  return -jnp.log(-jnp.log(u))


def _mix32(x: Array) -> Array:
  """``lowbias32`` (C. Wellons): an invertible 32-bit integer hash with good avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  x = x ^ (x >> 16)
  return x


def _hash_uniform(rng: Array, shape: tuple[int, ...]) -> Array:
  """float32 uniforms in the open interval (0, 1), 2**23 levels, from a keyed counter hash.

  Three rounds of an invertible hash of the flat index, keyed by three words mixed from the
  key's data; the top 23 bits pick the midpoint of one of 2**23 equal cells.
  """
  size = math.prod(shape)
  if size >= 2**32:
    raise ValueError("noise='hash' supports at most 2**32 - 1 items per call")
  s0, s1, s2 = _hash_seeds(rng)
  x = lax.iota(jnp.uint32, size).reshape(shape)
  x = _mix32(x ^ s0)
  x = _mix32(x + s1)
  x = _mix32(x ^ s2)
  m = (x >> 9).astype(jnp.int32).astype(jnp.float32)  # 23 bits, exact in float32
  return m * jnp.float32(2.0**-23) + jnp.float32(2.0**-24)  # midpoints: never 0, never 1


def _hash_seeds(rng: Array) -> tuple[Array, Array, Array]:
  """Three uint32 seeds from a PRNG key's data (typed key or raw uint32 key).

  The key's words are hashed rather than fed through ``jax.random.bits``: threefry costs
  ~0.3 s of compile time per compiled mask function on the CPU, and split/fold_in keys are
  already pseudo-random words.
  """
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  words = rng.reshape(-1).astype(jnp.uint32)
  a = jnp.uint32(0x243F6A88)
  b = jnp.uint32(0x85A308D3)
  for i in range(words.shape[0]):  # 2 words for threefry keys, 4 for rbg
    a = _mix32(a ^ words[i])
    b = _mix32(b + words[words.shape[0] - 1 - i])
  s0 = _mix32(a + b)
  s1 = _mix32(b ^ jnp.uint32(0x13198A2E) ^ s0)
  s2 = _mix32(a ^ jnp.uint32(0x03707344) ^ s1)
  return s0, s1, s2


# --------------------------------------------------------------------------------------------
# Masks


def reservoir_mask(
  rng: Array,
  scores: Array,
  keep_ratio: float | Array,
  *,
  temperature: float | Array = 1.0,
  granularity: str = "weight",
  channel_axis: int = -1,
  channel_multiple: int = 1,
  word_bits: int = 64,
  noise: str = "hash",
  tuning: Tuning = DEFAULT_TUNING,
) -> Array:
  """Weighted reservoir sample of one layer's connections (or channels) as a 0/1 mask.

  Exactly ``k`` items survive, drawn without replacement with weights
  ``scores ** (1/temperature)`` (A-Res / Gumbel-top-k). An item's inclusion probability is
  increasing in its weight but not proportional to it.

  Granularity:
    ``"weight"``: ``k = round(keep_ratio * n)`` connections (round half to even, computed in
      float32 so that a traced and a Python ratio give the same k).
    ``"channel"``: a channel is an index along ``channel_axis`` (the output features /
      filters: last axis of Flax Dense ``[in, out]`` and Conv ``[kh, kw, in, out]``
      kernels). A channel's score is the sum of its connections' scores;
      ``k_c = round(keep_ratio * C)`` channels are drawn the same way, with ``k_c`` rounded to
      the nearest multiple of ``channel_multiple``, never above C (the largest multiple that
      fits) and, when ``keep_ratio > 0``, never 0 (one multiple, or C if C is smaller);
      ``k_c == C`` is always allowed, so a ratio of 1 keeps every channel. The mask is the
      chosen channels broadcast over the other axes.
    ``"word"``: whole words of ``word_bits`` consecutive input channels of one kernel tap
      (axis -2 of ``[in, out]`` / ``[kh, kw, in, out]`` kernels; a tap's last word may be
      shorter), the same number in every output channel (3PXNet-style fixed fan-in, the
      layout of the compiled engine's ``word`` format, :mod:`arsp_jax.export.words`). A
      word's score is the sum of its connections' scores; each output channel draws
      ``k_w = round(keep_ratio * n_words)`` of its ``n_words = taps * ceil(in / word_bits)``
      words (never 0 when ``keep_ratio > 0``), so the kept fraction moves in steps of one
      word per channel: the sparsity achieved is the mask's, not exactly the ratio's.

  Args:
    rng: JAX PRNG key.
    scores: non-negative survival scores of the layer, any shape.
    keep_ratio: fraction kept in [0, 1] (clipped); Python float or traced scalar.
    temperature: see :func:`sampling_keys`; 0 means deterministic top-k by score.
    granularity: ``"weight"``, ``"channel"`` or ``"word"``.
    channel_axis: axis indexing channels (channel granularity).
    channel_multiple: channel count granularity, e.g. 8 for the output channels the Larq
      Compute Engine's kernels exploit.
    word_bits: word size of the word granularity (32 or 64 for the engines).
    noise: see :func:`sampling_keys`.
    tuning: chunk sizes of the selection passes (:class:`Tuning`).
  Returns:
    float32 0/1 mask shaped like ``scores``.
  """
  chex.assert_type(scores, float)
  chex.assert_rank([keep_ratio, temperature], 0)
  static = dict(
    granularity=granularity,
    channel_axis=int(channel_axis),
    channel_multiple=int(channel_multiple),
    word_bits=int(word_bits),
    noise=noise,
    tuning=tuning,
  )
  _check_mask_options(jnp.ndim(scores), **static)
  keep_ratio = jnp.asarray(keep_ratio, jnp.float32)  # one compiled function for every ratio
  if _is_python_number(temperature):
    return _mask_static_t(
      rng, scores, keep_ratio, temperature=_check_temperature(temperature), **static
    )
  return _mask_traced_t(rng, scores, keep_ratio, jnp.asarray(temperature, jnp.float32), **static)


def _check_mask_options(ndim: int, *, granularity, channel_multiple, word_bits, noise, **_):
  """ValueError for options :func:`reservoir_mask` cannot honour."""
  _check_noise(noise)
  if granularity not in GRANULARITIES:
    raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
  if granularity == "word" and (ndim < 2 or word_bits < 1):
    raise ValueError("word granularity needs a kernel [..., in, out] and word_bits >= 1")
  if granularity == "channel":
    if ndim == 0:
      raise ValueError("channel granularity needs at least a 1-D array")
    if channel_multiple < 1:
      raise ValueError(f"channel_multiple must be >= 1, got {channel_multiple}")


def _reservoir_mask(
  rng: Array,
  scores: Array,
  keep_ratio: float | Array,
  temperature: float | Array,
  *,
  granularity: str,
  channel_axis: int,
  channel_multiple: int,
  word_bits: int,
  noise: str,
  tuning: Tuning,
) -> Array:
  s = jnp.asarray(scores, jnp.float32)
  if granularity == "word":
    return _word_mask(rng, s, keep_ratio, temperature, noise, word_bits, tuning)
  if granularity == "weight":
    keys = _keys(rng, s, temperature, noise)
    return select_topk(keys, _weight_k(keep_ratio, s.size), "auto", tuning, in_place=True)
  axis = channel_axis % s.ndim
  n_channels = s.shape[axis]
  other = tuple(a for a in range(s.ndim) if a != axis)
  channel_scores = jnp.sum(s, axis=other)
  keys = _keys(rng, channel_scores, temperature, noise)
  k = _channel_k(keep_ratio, n_channels, channel_multiple)
  chosen = select_topk(keys, k, "auto", tuning, in_place=True)
  bshape = [1] * s.ndim
  bshape[axis] = n_channels
  return jnp.broadcast_to(chosen.reshape(bshape), s.shape)


def _word_mask(rng, s, keep_ratio, temperature, noise: str, word_bits: int, tuning: Tuning):
  """Word granularity of :func:`reservoir_mask`: per output channel its top ``k_w`` words."""
  i, o = s.shape[-2], s.shape[-1]
  taps = s.size // (i * o)
  iw = -(-i // word_bits)
  s3 = jnp.pad(s.reshape(taps, i, o), ((0, 0), (0, iw * word_bits - i), (0, 0)))
  word_scores = s3.reshape(taps, iw, word_bits, o).sum(axis=2).reshape(taps * iw, o).T
  keys = _keys(rng, word_scores, temperature, noise)  # [O, n_words]
  keep = _rowwise_topk(keys, _word_k(keep_ratio, taps * iw), tuning)
  words = jnp.broadcast_to(keep.T.reshape(taps, iw, 1, o), (taps, iw, word_bits, o))
  mask = words.reshape(taps, iw * word_bits, o)[:, :i]
  return mask.astype(jnp.float32).reshape(s.shape)


def _rowwise_topk(keys: Array, k: Array, tuning: Tuning) -> Array:
  """bool ``[O, n]``: the ``k`` largest keys of every row (ties to the lower index)."""
  o, n = keys.shape
  if n <= tuning.pairwise_max_n and o * n * n <= (1 << 26):
    return jax.vmap(lambda row: pairwise_keep(row, k))(ordered_bits(keys))
  return lax.map(lambda row: select_topk(row, k, "auto", tuning) > 0, keys)


def _word_k(keep_ratio: float | Array, n_words: int) -> Array:
  r = jnp.clip(jnp.asarray(keep_ratio, jnp.float32), 0.0, 1.0)
  k = jnp.round(r * jnp.float32(n_words)).astype(jnp.int32)
  return jnp.where((r > 0) & (k == 0), 1, k)


_MASK_STATIC = (
  "granularity",
  "channel_axis",
  "channel_multiple",
  "word_bits",
  "noise",
  "tuning",
)
_mask_static_t = jax.jit(_reservoir_mask, static_argnames=("temperature",) + _MASK_STATIC)
_mask_traced_t = jax.jit(_reservoir_mask, static_argnames=_MASK_STATIC)


def reservoir_masks(
  rng: Array,
  scores: Mapping[str, Array],
  keep_ratios: Mapping[str, float | Array] | Array,
  **kw: Any,
) -> dict[str, Array]:
  """:func:`reservoir_mask` for every layer in one call.

  Layers are visited in sorted key order; layer ``i`` of that order draws with
  ``jax.random.fold_in(rng, i)``. Works under ``jit`` with traced keep ratios.

  Args:
    rng: JAX PRNG key.
    scores: ``{layer path: scores}``.
    keep_ratios: ``{layer path: ratio}`` with the same keys, or an array of shape ``[L]``
      in sorted key order.
    **kw: keyword arguments of :func:`reservoir_mask`; a value that is a mapping is looked up
      per layer (e.g. ``granularity={"conv1": "channel", "dense": "weight"}``).
  Returns:
    ``{layer path: float32 mask}`` with the keys (and key order) of ``scores``.
  """
  names = sorted(scores)
  if isinstance(keep_ratios, Mapping):
    missing = [name for name in names if name not in keep_ratios]
    if missing:
      raise ValueError(f"keep_ratios lack layers {missing}")
    ratios = [keep_ratios[name] for name in names]
  else:
    arr = jnp.asarray(keep_ratios)
    if arr.shape != (len(names),):
      raise ValueError(
        f"keep_ratios must have shape ({len(names)},) (sorted layer order), got {arr.shape}"
      )
    ratios = [arr[i] for i in range(len(names))]
  masks = {}
  for i, name in enumerate(names):
    layer_kw = {key: (v[name] if isinstance(v, Mapping) else v) for key, v in kw.items()}
    layer_rng = jax.random.fold_in(rng, i)
    masks[name] = reservoir_mask(layer_rng, scores[name], ratios[i], **layer_kw)
  return {name: masks[name] for name in scores}


def _weight_k(keep_ratio: float | Array, n: int) -> Array:
  r = jnp.clip(jnp.asarray(keep_ratio, jnp.float32), 0.0, 1.0)
  return jnp.round(r * jnp.float32(n)).astype(jnp.int32)


def _channel_k(keep_ratio: float | Array, n_channels: int, multiple: int) -> Array:
  r = jnp.clip(jnp.asarray(keep_ratio, jnp.float32), 0.0, 1.0)
  k0 = jnp.round(r * jnp.float32(n_channels)).astype(jnp.int32)
  k = multiple * jnp.round(k0.astype(jnp.float32) / multiple).astype(jnp.int32)
  k = jnp.where(k > n_channels, multiple * (n_channels // multiple), k)
  k = jnp.where(k0 == n_channels, n_channels, k)
  return jnp.where((r > 0) & (k == 0), min(multiple, n_channels), k)


def _is_python_number(x: Any) -> bool:
  array_like = (bool, np.ndarray, np.generic, jax.Array)
  return isinstance(x, numbers.Real) and not isinstance(x, array_like)


# --------------------------------------------------------------------------------------------
# Exact inclusion probabilities (reference for tests and docs)


def inclusion_probabilities(p: Any, k: int) -> np.ndarray:
  """Exact A-Res inclusion probability of each item, by enumerating all ordered draws.

  A-Res is equivalent to drawing ``k`` items one at a time without replacement, each with
  probability proportional to its weight among the items left. The probability of an
  ordered draw ``(i1, ..., ik)`` is ``prod_j p_ij / (sum of weights left before draw j)``;
  an item's inclusion probability is the total over draws containing it. It is increasing
  in ``p`` but not proportional to it (unless k == 1). Zero weights are drawn only once
  every positive weight is gone, then in index order (as ties are broken by
  :func:`topk_mask`). Cost ``n!/(n-k)!``: meant for ``n <= 6`` (at most 8 accepted).

  Args:
    p: 1-D non-negative weights (for a temperature T, pass ``score ** (1/T)``).
    k: sample size (clipped to [0, n]).
  Returns:
    float64 array of inclusion probabilities; sums to k.
  """
  p = np.asarray(p, np.float64)
  if p.ndim != 1:
    raise ValueError(f"p must be 1-D, got shape {p.shape}")
  if np.any(p < 0) or not np.all(np.isfinite(p)):
    raise ValueError("p must be finite and non-negative")
  n = p.shape[0]
  if n > 8:
    raise ValueError(f"exact enumeration is meant for n <= 6 (at most 8), got n = {n}")
  k = int(min(max(int(k), 0), n))
  incl = np.zeros(n)
  for order in itertools.permutations(range(n), k):
    prob = 1.0
    left = set(range(n))
    for i in order:
      mass = sum(p[j] for j in left)
      if mass > 0:
        prob *= p[i] / mass
      else:
        prob *= 1.0 if i == min(left) else 0.0
      if prob == 0.0:
        break
      left.remove(i)
    if prob > 0:
      incl[list(order)] += prob
  return incl
