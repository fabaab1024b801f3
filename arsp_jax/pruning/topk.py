"""Exact top-k masks with a traced k, without sorting: radix select over an order-preserving
uint32 image of float32 keys (used by :mod:`arsp_jax.pruning.reservoir`; see its docstring).

Equal keys are broken by lower flat index; NaN reads as ``-inf``; ``k`` may be a traced int32
scalar, clipped to ``[0, n]``.  :func:`sharded_topk_mask` computes the same mask for keys split
over devices inside ``jax.shard_map``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
_LOW_MASK = _BINS - 1
# At or below this many items (a static size) the mask comes from pairwise ranks: O(n^2) work,
# but no 65536-bin histograms, which matters under vmap (many small problems at once).
_PAIRWISE_MAX_N = 1024
# Passes stream over the keys in chunks of these sizes (measured best on a 2-core CPU).
_HIST_CHUNK = 1 << 20
_COUNT_CHUNK = 1 << 18
# Width of each level of the search for the cut among tied keys (a masked row sum of
# width**2 elements per level).
_TIE_BLOCK = 256
_SELECT_METHODS = ("auto", "radix", "bisect", "pairwise")


class Tuning(NamedTuple):
  """Static sizes of the selection passes (a keyword of the mask functions; tests pass small
  sizes to reach the many-chunk code paths with a few thousand keys)."""

  hist_chunk: int = _HIST_CHUNK
  count_chunk: int = _COUNT_CHUNK
  tie_block: int = _TIE_BLOCK
  pairwise_max_n: int = _PAIRWISE_MAX_N


DEFAULT_TUNING = Tuning()

# --------------------------------------------------------------------------------------------
# Exact top-k selection


def ordered_bits(keys: Array) -> Array:
  """Maps float32 keys to uint32 so that unsigned order equals float order.

  Non-negative floats get their sign bit set; negative floats have all bits flipped.
  ``-0.0`` is read as ``+0.0`` and NaN as ``-inf`` (so NaN keys are never preferred).
  Where the platform flushes denormals to zero (XLA on CPU does), they compare as zero.
  """
  x = jnp.asarray(keys, jnp.float32)
  x = jnp.where(jnp.isnan(x), -jnp.inf, x)
  x = jnp.where(x == 0, jnp.float32(0), x)
  b = lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(b >= jnp.uint32(0x80000000), ~b, b | jnp.uint32(0x80000000))


def topk_mask(
  keys: Array, k: int | Array, *, method: str = "auto", tuning: Tuning = DEFAULT_TUNING
) -> Array:
  """Mask of the ``k`` largest keys: exactly ``k`` ones (``k`` clipped to ``[0, n]``).

  Ties are broken by lower flat index; ``-inf`` keys are taken last. ``k`` may be a traced
  int32 scalar. Nothing is sorted and ``lax.top_k`` is not used: the k-th largest key is
  found exactly by radix select (two passes of 2**16-bin histograms over the
  order-preserving uint32 image of the keys), then the mask is every key above it plus the
  first ``k - count_greater`` keys equal to it in flat index order.

  Every pass streams over the keys in chunks of 2**20 inside a ``fori_loop``, so the
  temporaries stay cache-sized: on the CPU a full-size temporary costs more (page faults on
  a fresh buffer every call) than the arithmetic.

  Args:
    keys: float32 array, any shape.
    k: number of items to keep (Python int or int32 scalar, possibly traced).
    method: ``"auto"`` (pairwise ranks for n <= 1024, else radix), ``"radix"``,
      ``"bisect"`` (bisection over the 32 key bits: 33 counting passes) or ``"pairwise"``
      (O(n^2) ranks; small n only).
    tuning: chunk sizes of the passes (:class:`Tuning`).
  Returns:
    float32 0/1 mask shaped like ``keys``.
  """
  if method not in _SELECT_METHODS:
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(_SELECT_METHODS)}")
  chex.assert_type(keys, float)
  chex.assert_rank(k, 0)
  k = jnp.asarray(k).astype(jnp.int32)  # one compiled function for every k
  return _topk_mask_jit(keys, k, method=method, tuning=tuning)


def select_topk(
  keys: Array, k: int | Array, method: str, tuning: Tuning, in_place: bool = False
) -> Array:
  """``topk_mask``; ``in_place`` overwrites the keys' buffer chunk by chunk with the mask
  (for keys computed inside the same compiled function: saves one full-size buffer)."""
  keys = jnp.asarray(keys, jnp.float32)
  shape = keys.shape
  n = keys.size
  if n == 0:
    return jnp.zeros(shape, jnp.float32)
  flat = keys.reshape(-1)
  k = jnp.clip(jnp.asarray(k).astype(jnp.int32), 0, n)
  if method == "pairwise" or (method == "auto" and n <= tuning.pairwise_max_n):
    keep = pairwise_keep(ordered_bits(flat), k)
  else:
    search = _bisect_threshold if method == "bisect" else _radix_threshold
    t, greater, ties = search(flat, k, _identity, tuning)
    cut = _tie_cut(flat, t, k - greater, ties, tuning)
    if in_place:
      return _keep_in_place(flat, t, cut, tuning.hist_chunk).reshape(shape)
    keep = _keep(flat, t, cut)
  return keep.astype(jnp.float32).reshape(shape)


_topk_mask_jit = jax.jit(select_topk, static_argnames=("method", "tuning"))


def sharded_topk_mask(
  keys_shard: Array,
  k: int | Array,
  axis_name: Any,
  *,
  method: str = "radix",
  tuning: Tuning = DEFAULT_TUNING,
) -> Array:
  """``topk_mask`` of keys split over devices; call inside ``jax.shard_map``.

  The layer's flattened keys are the concatenation, in ``axis_index`` order, of the
  flattened local shards (e.g. a 1-D array with ``in_specs=P(axis_name)``). The result on
  each device is that device's part of ``topk_mask(all_keys, k)`` exactly, including the
  tie-breaking by global flat index. Per-device histograms (or counts) are summed with
  ``psum`` to find the global threshold; ties at the threshold are cut using an exclusive
  prefix of per-device tie counts (``all_gather`` + ``axis_index``). Communication: two
  all-reduces of 2**16 int32 (radix) or 33 scalar all-reduces (bisect), one all-gather of
  one int32 per device.

  Args:
    keys_shard: this device's float32 keys, any shape.
    k: global number of items to keep, identical on every device (clipped to [0, N]).
    axis_name: name of the mesh axis the keys are split over.
    method: ``"radix"`` or ``"bisect"``.
    tuning: chunk sizes of the passes (:class:`Tuning`).
  Returns:
    float32 0/1 mask shaped like ``keys_shard``.
  """
  if method not in ("radix", "bisect"):
    raise ValueError(f"sharded method must be 'radix' or 'bisect', got {method!r}")
  keys_shard = jnp.asarray(keys_shard, jnp.float32)
  shape = keys_shard.shape
  flat = keys_shard.reshape(-1)
  if flat.shape[0] == 0:
    return jnp.zeros(shape, jnp.float32)
  psum = functools.partial(lax.psum, axis_name=axis_name)
  n_global = psum(jnp.int32(flat.shape[0]))
  k = jnp.clip(jnp.asarray(k).astype(jnp.int32), 0, n_global)
  search = _bisect_threshold if method == "bisect" else _radix_threshold
  t, greater, ties = search(flat, k, psum, tuning)
  all_ties = lax.all_gather(ties, axis_name)
  me = lax.axis_index(axis_name)
  before = jnp.sum(jnp.where(jnp.arange(all_ties.shape[0]) < me, all_ties, 0))
  need = jnp.clip(k - greater - before, 0, ties)
  cut = _tie_cut(flat, t, need, ties, tuning)
  return _keep(flat, t, cut).astype(jnp.float32).reshape(shape)


def _identity(x: Array) -> Array:
  return x


def pairwise_keep(u: Array, k: Array) -> Array:
  """keep_i = (#items ranked before i) < k, ranking by key, then by lower index."""
  idx = jnp.arange(u.shape[0])
  beats = (u[None, :] > u[:, None]) | ((u[None, :] == u[:, None]) & (idx[None, :] < idx[:, None]))
  return jnp.sum(beats, axis=1, dtype=jnp.int32) < k


def _fold_chunks(flat: Array, chunk: int, body: Callable[..., Any], init: Any) -> Any:
  """Folds ``body(i, u_seg, valid, start, carry)`` over the chunks ``i`` of ``flat``.

  ``u_seg`` is the ordered-bits image of ``chunk`` keys starting at flat index ``start``;
  ``valid`` marks the entries not already visited (the last chunk is shifted back to end at
  n, overlapping its predecessor, so that every slice has the same static size).
  """
  n = flat.shape[0]
  chunk = min(chunk, n)
  n_chunks = -(-n // chunk)

  def step(i, carry):
    first = i * chunk
    start = jnp.minimum(first, n - chunk)
    seg = ordered_bits(lax.dynamic_slice(flat, (start,), (chunk,)))
    valid = start + lax.iota(jnp.int32, chunk) >= first
    return body(i, seg, valid, start, carry)

  init = _varying_like(init, flat)
  if n_chunks == 1:
    return step(jnp.int32(0), init)
  return lax.fori_loop(0, n_chunks, step, init)


def _varying_like(tree: Any, like: Array) -> Any:
  """Inside ``shard_map``, marks ``tree`` as varying over the mesh axes ``like`` varies over.

  A loop carry that accumulates per-device data must start with the same type as it ends.
  """
  aval = jax.typeof(like)
  mat = getattr(aval, "manual_axis_type", None)
  varying = getattr(mat, "varying", None) if mat is not None else getattr(aval, "vma", None)
  axes = tuple(sorted(varying or (), key=str))
  if not axes:
    return tree
  return jax.tree.map(lambda x: lax.pcast(x, axes, to="varying"), tree)


def _histogram_pass(flat: Array, digit: Callable[[Array], Array], chunk: int) -> Array:
  """2**16-bin histogram of ``digit(u)`` (out-of-range digits are dropped)."""

  def body(i, seg, valid, start, hist):
    idx = jnp.where(valid, digit(seg), _BINS)
    return hist.at[idx].add(1, mode="drop")

  return _fold_chunks(flat, chunk, body, jnp.zeros(_BINS, jnp.int32))


def _suffix_sums(x: Array) -> Array:
  """``out[i] = sum(x[i:])`` for a short vector, by a masked row sum.

  Cumulative sums of this size cost nothing to run but ``jnp.cumsum`` takes ~0.3-0.6 s to
  compile on the CPU (a ``reduce_window``); the masked sum compiles in a few milliseconds.
  """
  idx = jnp.arange(x.shape[0])
  return jnp.sum(jnp.where(idx[None, :] >= idx[:, None], x[None, :], 0), axis=1)


def _prefix_sums(x: Array) -> Array:
  """``out[i] = sum(x[: i + 1])`` for a short vector (see ``_suffix_sums``)."""
  idx = jnp.arange(x.shape[0])
  return jnp.sum(jnp.where(idx[None, :] <= idx[:, None], x[None, :], 0), axis=1)


def _top_bin(hist: Array, k: Array) -> tuple[Array, Array]:
  """For a 2**16-bin histogram: the largest bin ``b`` with ``#(bins >= b) >= k``, and
  ``#(bins > b)``. Requires ``0 <= k <= hist.sum()``; k == 0 gives the last bin.

  Two levels of 256: first the row of 256 bins, then the bin within that row.
  """
  width = 1 << (_DIGIT_BITS // 2)
  rows = hist.reshape(width, width)
  row_totals = jnp.sum(rows, axis=1)
  ge_row = _suffix_sums(row_totals)  # ge_row[0] = total >= k
  r = jnp.sum(ge_row >= k, dtype=jnp.int32) - 1
  row = lax.dynamic_index_in_dim(rows, r, axis=0, keepdims=False)
  ge = (ge_row[r] - row_totals[r]) + _suffix_sums(row)  # ge[0] = ge_row[r] >= k
  c = jnp.sum(ge >= k, dtype=jnp.int32) - 1
  return r * width + c, ge[c] - row[c]


def _radix_threshold(
  flat: Array, k: Array, reduce: Callable[[Array], Array], tuning: Tuning
) -> tuple[Array, Array, Array]:
  """Exact k-th largest key (as ordered bits) by two 16-bit digit histograms.

  Returns ``(t, greater, ties)``: ``t`` the largest value with ``count(u >= t) >= k``
  (``0xFFFFFFFF`` when k == 0), ``greater = count(u > t)`` (reduced, i.e. global) and
  ``ties = count(u == t)`` among the local items (not reduced).
  """
  high = lambda u: (u >> _DIGIT_BITS).astype(jnp.int32)  # noqa: E731
  h1 = reduce(_histogram_pass(flat, high, tuning.hist_chunk))
  b, above_b = _top_bin(h1, k)
  b_u = b.astype(jnp.uint32)

  def low(u):
    digit = (u & jnp.uint32(_LOW_MASK)).astype(jnp.int32)
    return jnp.where((u >> _DIGIT_BITS) == b_u, digit, _BINS)

  h2_local = _histogram_pass(flat, low, tuning.hist_chunk)
  l, above_l = _top_bin(reduce(h2_local), k - above_b)
  t = (b_u << _DIGIT_BITS) | l.astype(jnp.uint32)
  return t, above_b + above_l, h2_local[l]


def _bisect_threshold(
  flat: Array, k: Array, reduce: Callable[[Array], Array], tuning: Tuning
) -> tuple[Array, Array, Array]:
  """Same contract as ``_radix_threshold``: one counting pass per key bit, plus one."""

  def count_at_least(cand):
    def body(i, seg, valid, start, count):
      return count + jnp.sum(valid & (seg >= cand), dtype=jnp.int32)

    return reduce(_fold_chunks(flat, tuning.count_chunk, body, jnp.int32(0)))

  def step(i, t):
    cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(count_at_least(cand) >= k, cand, t)

  t = lax.fori_loop(0, 32, step, jnp.uint32(0))

  def body(i, seg, valid, start, counts):
    greater = jnp.sum(valid & (seg > t), dtype=jnp.int32)
    equal = jnp.sum(valid & (seg == t), dtype=jnp.int32)
    return counts + jnp.stack([greater, equal])

  greater, ties = _fold_chunks(flat, tuning.count_chunk, body, jnp.zeros(2, jnp.int32))
  return t, reduce(greater), ties


def _tie_cut(flat: Array, t: Array, need: Array, ties: Array, tuning: Tuning) -> Array:
  """Largest flat index ``cut`` such that exactly ``need`` keys == t lie at indices <= cut.

  The mask takes the keys == t at indices <= cut. Usually every tie is taken (continuous
  noise leaves a single key at the threshold) and this costs nothing; otherwise: one pass of
  per-chunk tie counts, then a multi-level prefix count inside the one chunk that holds the
  ``need``-th tie.
  """
  n = flat.shape[0]
  chunk = min(tuning.hist_chunk, n)
  n_chunks = -(-n // chunk)

  def take_none():
    return jnp.zeros_like(ties) - 1

  def take_all():
    return jnp.zeros_like(ties) + n

  def search():
    def body(i, seg, valid, start, counts):
      return counts.at[i].set(jnp.sum(valid & (seg == t), dtype=jnp.int32))

    counts = _fold_chunks(flat, chunk, body, jnp.zeros(n_chunks, jnp.int32))
    j, r = _rth_position(counts, need, tuning.tie_block)  # chunk of the need-th tie
    first = j * chunk
    start = jnp.minimum(first, n - chunk)
    seg = ordered_bits(lax.dynamic_slice(flat, (start,), (chunk,)))
    hit = (start + lax.iota(jnp.int32, chunk) >= first) & (seg == t)
    pos, _ = _rth_position(hit.astype(jnp.int32), r, tuning.tie_block)
    return start + pos

  branch = jnp.where(need <= 0, 0, jnp.where(need >= ties, 1, 2))
  return lax.switch(branch, (take_none, take_all, search))


def _rth_position(x: Array, r: Array, width: int) -> tuple[Array, Array]:
  """Index ``i`` where the inclusive prefix sum of counts ``x`` first reaches ``r`` (>= 1),
  and ``r`` minus the counts before ``i``. Levels of at most ``width`` (no ``cumsum``)."""
  m = x.shape[0]
  if m <= width:
    incl = _prefix_sums(x)
    i = jnp.minimum(jnp.sum(incl < r, dtype=jnp.int32), m - 1)
    return i, r - (incl[i] - x[i])
  n_rows = -(-m // width)
  rows = jnp.pad(x, (0, n_rows * width - m)).reshape(n_rows, width)
  row_index, r_row = _rth_position(jnp.sum(rows, axis=1), r, width)
  row = lax.dynamic_index_in_dim(rows, row_index, axis=0, keepdims=False)
  col, r_col = _rth_position(row, r_row, width)
  return row_index * width + col, r_col


def _keep(flat: Array, t: Array, cut: Array, offset: Array | int = 0) -> Array:
  u = ordered_bits(flat)
  idx = offset + lax.iota(jnp.int32, flat.shape[0])
  return (u > t) | ((u == t) & (idx <= cut))


def _keep_in_place(flat: Array, t: Array, cut: Array, chunk: int) -> Array:
  """float32 ``_keep`` written over ``flat`` chunk by chunk (``dynamic_update_slice`` on
  a loop carry), so that XLA reuses the keys' buffer for the mask instead of allocating a
  second full-size one: on the CPU a fresh 100 MB buffer costs ~85 ms of page faults."""
  n = flat.shape[0]
  chunk = min(chunk, n)
  n_chunks = -(-n // chunk)

  def step(i, buf):
    first = i * chunk
    start = jnp.minimum(first, n - chunk)
    seg = lax.dynamic_slice(buf, (start,), (chunk,))
    mask = _keep(seg, t, cut, start).astype(jnp.float32)
    fresh = start + lax.iota(jnp.int32, chunk) >= first  # the overlap is already a mask
    return lax.dynamic_update_slice(buf, jnp.where(fresh, mask, seg), (start,))

  if n_chunks == 1:
    return step(jnp.int32(0), flat)
  return lax.fori_loop(0, n_chunks, step, flat)
