"""The compiled engine's fused passes (arsp_jax.export.dense_chain, conv_chain, conv_fused):
exact against Flax on standardised 8-bit pixels (bit planes) and on other inputs (subset-sum
tables); every architecture (and a user's own model) run compiled from the export's graph."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arsp_jax import models
from arsp_jax.export import (
  compiled,
  compress,
  dense_chain,
  engine,
  flat,
  kernels,
  rules,
  simd,
)
from arsp_jax.models.binary import BinaryConv, BinaryDense
from tests.test_compress import MODES, TINY, _flax_logits, _random_variables

STD = {"mean": [72.94], "std": [90.02]}  # Fashion-MNIST's training statistics


def test_pack_flags_and_pixel_planes():
  rng = np.random.default_rng(0)
  flags = (rng.random(192) < 0.5).astype(np.uint8)
  out = np.zeros(3, np.uint64)
  kernels.pack_flags(flags, out)
  ref = np.packbits(flags, bitorder="little").view("<u8")
  np.testing.assert_array_equal(out, ref)
  # Every 8-bit value, standardised in float32 like the data pipeline, is recognised.
  r = 300
  u = np.resize(np.arange(256), r).astype(np.uint8)
  mean, std = np.float32(72.94), np.float32(90.02)
  x = (u.astype(np.float32) - mean) / std
  m64, s64 = np.full(r, float(mean)), np.full(r, float(std))
  mf, sf = np.full(r, mean, np.float32), np.full(r, std, np.float32)
  u8, planes, usum = np.zeros(320, np.uint8), np.zeros((5, 8), np.uint64), np.zeros(5, np.int64)
  assert dense_chain.pixel_planes(x, m64, s64, mf, sf, u8, planes, usum) == int(u.astype(int).sum())
  np.testing.assert_array_equal(u8[:r], u)
  bits = np.unpackbits(planes.T.copy().view(np.uint8), axis=1, bitorder="little")[:, :r]
  np.testing.assert_array_equal((bits * (1 << np.arange(8))[:, None]).sum(0), u)
  np.testing.assert_array_equal(
    usum, np.add.reduceat(np.pad(u.astype(int), (0, 20)), range(0, 320, 64))
  )
  x[7] = np.nextafter(x[7], np.float32(9))  # one float off: not pixels
  assert dense_chain.pixel_planes(x, m64, s64, mf, sf, u8, planes, usum) == -1


def test_sign_thresholds_are_the_float_epilogue():
  rng = np.random.default_rng(1)
  o, nmax = 300, 200
  kbits = rng.integers(-5, 60, o)
  scale, bias = rng.normal(size=o), rng.normal(size=o) * 5
  mult, add = rng.normal(size=o), rng.normal(size=o) * 3
  mult[:5] = 0.0  # constant rules
  s, t = rules.sign_thresholds(kbits, scale, bias, mult, add, nmax)
  lo, hi = rules.popcount_bounds(kbits, s, t)
  pc = np.arange(0, 60)
  n = kbits[:, None] - 2 * pc[None]
  ref = ((n * scale[:, None] + bias[:, None]) * mult[:, None] + add[:, None]) >= 0
  np.testing.assert_array_equal((pc >= lo[:, None]) & (pc <= hi[:, None]), ref)


CASES = [  # (mode, granularity, fc1's bit-plane mode: see dense_chain.plane_rows)
  ("bnn", "dense", 0),
  ("bnn", "word", 1),  # 1 of fc1's 4 words per output: gathered
  ("bnn", "word50", 4),  # 2 of 4 words: in place
  ("bnn", "word1", 1),  # the last binary layer keeps 1 of its 7 words: the one-word gather
  ("bnn", "weight", 3),  # channel masks run fused in test_compress (float inputs)
  ("allbin", "word", 1),
]


@pytest.mark.parametrize(
  "mode,granularity,plane_mode", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_fused_mlp_matches_flax_on_pixels_and_floats(mode, granularity, plane_mode, tmp_path):
  shape = (16, 16, 1)
  model = models.get_model("mlp", 5, hidden=(130, 400, 70), **MODES[mode])
  v = _random_variables(model, shape, granularity[:4] if granularity != "dense" else "weight")
  if granularity == "dense":
    v["masks"] = jax.tree_util.tree_map(np.ones_like, v["masks"])
  if granularity == "word50":  # fc1: 2 of its 4 64-bit words per output
    keep = np.zeros((4, 130), bool)
    for c in range(130):
      keep[np.random.default_rng(c).permutation(4)[:2], c] = True
    v["masks"]["fc1"]["kernel"] = np.repeat(keep, 64, axis=0).astype(np.float32)
  if granularity == "word1":  # fc3 (400 -> 70, 7 words per output): one word each
    keep = np.zeros((7, 70), bool)
    keep[np.random.default_rng(3).integers(0, 7, 70), np.arange(70)] = True
    v["masks"]["fc3"]["kernel"] = np.repeat(keep, 64, axis=0)[:400].astype(np.float32)
  path = str(tmp_path / "m.arsp")
  arch = compress.describe_model(model, shape)
  compress.export(path, v["params"], v["masks"], v["batch_stats"], arch, {"standardisation": STD})
  m = engine.load(path, "compiled")
  assert m.forward == m.forward_dense_chain
  if mode == "bnn":  # the last binary layer's kept words per output (F)
    base = dense_chain.N_FIRST + dense_chain.N_BINARY * (m.dense_chain["n_layers"] - 1)
    bufs = m.dense_chain["buffers"]
    f_last = flat.grid(bufs[0], bufs[-1], base + dense_chain.B_W).shape[0]
    assert f_last == {"word1": 1, "word": 2, "word50": 2}.get(granularity, f_last)
  # bnn word: the last binary layer gathers, its outputs sorted by their first word
  assert m.dense_chain["sorted_last"] == (mode == "bnn" and granularity.startswith("word"))
  bufs = m.dense_chain["buffers"]
  assert flat.span(bufs[1], bufs[-1], dense_chain.F_OPTS)[dense_chain.O_PLANE_MODE] == plane_mode
  rng = np.random.default_rng(2)
  pixels = m.preprocess(rng.integers(0, 256, (12, *shape)).astype(np.uint8))
  assert dense_chain.all_pixels(pixels.reshape(12, -1), m.dense_chain["buffers"])
  floats = rng.normal(size=pixels.shape).astype(np.float32)
  for x in (pixels, floats):
    ref = _flax_logits(model, v, x)
    for batch_size in (12, 1):  # > LUT_MAX_BATCH: floats take the per-layer path
      got = m.logits(x, batch_size=batch_size)
      np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  _, times = m.profile(pixels[:1])
  assert list(times) == m.dense_chain["names"] and all(t > 0 for t in times.values())


@pytest.mark.skipif(not simd.AVX512, reason="the 16-word permute needs AVX-512F")
@pytest.mark.parametrize("width", [400, 1024, 1100])
def test_select16_is_the_one_word_gather_bit_for_bit(width, tmp_path, monkeypatch):
  """The last binary layer with one kept word per output on <= 16 input words (7: 70 outputs,
  8 permutes + a scalar tail of 6; 16: every table word) picks its words by the AVX-512
  permute (simd.select16_counts) with the logits of the gather loop; on 18 words it gathers."""
  shape = (16, 16, 1)
  model = models.get_model("mlp", 5, hidden=(130, width, 70), **MODES["bnn"])
  v = _random_variables(model, shape, "word")
  n_w = -(-width // 64)
  keep = np.zeros((n_w, 70), bool)
  keep[np.random.default_rng(3).integers(0, n_w, 70), np.arange(70)] = True
  keep[n_w - 1, :2] = True  # outputs 0 and 1 keep the last word (16 words: the table's last)
  keep[:-1, :2] = False
  v["masks"]["fc3"]["kernel"] = np.repeat(keep, 64, axis=0)[:width].astype(np.float32)
  path = str(tmp_path / "m.arsp")
  arch = compress.describe_model(model, shape)
  compress.export(path, v["params"], v["masks"], v["batch_stats"], arch, {"standardisation": STD})
  monkeypatch.setattr(compiled, "SELECT16", True)
  m = engine.load(path, "compiled")
  monkeypatch.setattr(compiled, "SELECT16", False)
  ref = engine.load(path, "compiled")
  assert m.dense_chain["sorted_last"] and ref.dense_chain["sorted_last"]
  assert m.dense_chain["select16"] == (n_w <= 16) and not ref.dense_chain["select16"]
  rng = np.random.default_rng(4)
  pixels = m.preprocess(rng.integers(0, 256, (9, *shape)).astype(np.uint8))
  for x in (pixels, rng.normal(size=pixels.shape).astype(np.float32)):
    np.testing.assert_array_equal(m.logits(x, batch_size=9), ref.logits(x, batch_size=9))
    np.testing.assert_array_equal(m.logits(x[:1]), ref.logits(x[:1]))
  ref = _flax_logits(model, v, pixels)
  np.testing.assert_allclose(m.logits(pixels), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("granularity", ["word", "weight"])
def test_cnn_small_conv_sign_pool_matches_flax(granularity, tmp_path):
  """conv2 and conv3 (64 channels: its packed output is fc4's input) with max pool +
  batchnorm + sign fused as integer thresholds and OR/AND pooling of the bits."""
  shape = (12, 12, 1)
  model = models.get_model("cnn_small", 5, width=0.5, **MODES["bnn"])
  v = _random_variables(model, shape, granularity)
  path = str(tmp_path / "m.arsp")
  compress.export(
    path, v["params"], v["masks"], v["batch_stats"], compress.describe_model(model, shape)
  )
  m = engine.load(path, "compiled")
  x = np.random.default_rng(3).normal(size=(6, *shape)).astype(np.float32)
  ref = _flax_logits(model, v, x)
  got = m.logits(x)
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  fused_convs = sorted(k[1] for k in m.conv_corr if k[0] == "sign_pool")
  assert fused_convs == ["conv2", "conv3"]
  assert m.tails["bn4"] is not None  # clip + bn4 + out in one call at this batch size
  # conv1 + bn1 + sign + pack in one kernel: the same bits as the layer, then bn + sign + pack
  fused1 = m.real_conv_sign_packed("conv1", "bn1", x.astype(np.float64))
  apart = m.bn_sign_packed("bn1", m.layer("conv1", x.astype(np.float64)))
  np.testing.assert_array_equal(fused1.words, apart.words)
  # Above LUT_MAX_BATCH images conv1 and the tail run as separate steps (BLAS, numpy).
  x = np.random.default_rng(4).normal(size=(compiled.LUT_MAX_BATCH + 3, *shape)).astype(np.float32)
  got, ref = m.logits(x), _flax_logits(model, v, x)
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_conv1_sign_pack_matches_the_layer_for_multichannel_inputs(tmp_path):
  """The fused conv1 kernel's general path (K != 9: 3 input channels) gives the same bits as
  the layer followed by batchnorm + sign + pack."""
  shape = (8, 8, 3)
  model = models.get_model("cnn_small", 5, width=0.5, **MODES["bnn"])
  v = _random_variables(model, shape, "weight")
  path = str(tmp_path / "m.arsp")
  compress.export(
    path, v["params"], v["masks"], v["batch_stats"], compress.describe_model(model, shape)
  )
  m = engine.load(path, "compiled")
  x = np.random.default_rng(5).normal(size=(3, *shape))
  fused1 = m.real_conv_sign_packed("conv1", "bn1", x)
  np.testing.assert_array_equal(fused1.words, m.bn_sign_packed("bn1", m.layer("conv1", x)).words)
  ref = _flax_logits(model, v, x.astype(np.float32))
  np.testing.assert_array_equal(m.logits(x.astype(np.float32)).argmax(-1), ref.argmax(-1))


def _signed_bn(v, names, seed=7):
  """Batchnorm scales of random sign, some zero: every case of the integer sign rule and of
  the pooling polarity (max or min of the window)."""
  rng = np.random.default_rng(seed)
  for bn in names:
    s = np.array(v["params"][bn]["scale"])
    s *= rng.choice([-1.0, 1.0], s.shape)
    s[rng.random(s.shape) < 0.1] = 0.0
    v["params"][bn]["scale"] = s.astype(np.float32)
  return v


def _keep_one_word_per_output(v, rng):
  """conv2's and conv3's masks keep one random 64-bit word (of one tap) per output channel."""
  for name in ("conv2", "conv3"):
    k = v["masks"][name]["kernel"]
    i, o = k.shape[-2:]
    iw = -(-i // 64)
    keep = np.zeros((9 * iw, o), bool)
    keep[rng.integers(0, 9 * iw, o), np.arange(o)] = True
    m = np.repeat(keep.reshape(9, iw, o), 64, axis=1)[:, :i]
    v["masks"][name]["kernel"] = m.reshape(k.shape).astype(np.float32)


CONV_CASES = [(w, g) for w in (0.5, 2) for g in ("dense", "weight", "word", "word1", "channel")]


@pytest.mark.parametrize("width,granularity", CONV_CASES, ids=[f"{w}-{g}" for w, g in CONV_CASES])
def test_cnn_small_fused_conv_equals_the_layer_then_pool_bn_sign(width, granularity, tmp_path):
  """The fused conv + max pool + batchnorm + sign kernel gives the bits of the layer followed
  by the separate pool + batchnorm + sign, for dense, unstructured, word (3 of 9 words per
  output and 1: gathered) and channel masks, 9-word patches (width 0.5: 16 and 32 input
  channels; 2: conv2's 64) and longer ones (width 2: conv3's 128 input channels, 18 words);
  and the whole model in one call (:func:`conv_chain.conv_chain_forward`) as the per-layer path."""
  shape = (12, 12, 1)
  model = models.get_model("cnn_small", 5, width=width, **MODES["bnn"])
  gran = {"dense": "weight", "word1": "word"}.get(granularity, granularity)
  v = _signed_bn(_random_variables(model, shape, gran), ("bn2", "bn3"))
  if granularity == "dense":
    v["masks"] = jax.tree_util.tree_map(np.ones_like, v["masks"])
  if granularity == "word1":  # one kept word per output (the word format at >= 0.89)
    _keep_one_word_per_output(v, np.random.default_rng(9))
  if granularity == "channel" and width == 2:  # 128 of conv3's 256 channels: fc4 packed
    k = v["masks"]["conv3"]["kernel"]
    keep = np.zeros(k.shape[-1], bool)
    keep[np.random.default_rng(9).permutation(k.shape[-1])[:128]] = True
    v["masks"]["conv3"]["kernel"] = np.broadcast_to(keep, k.shape).astype(np.float32).copy()
  path = str(tmp_path / "m.arsp")
  compress.export(
    path, v["params"], v["masks"], v["batch_stats"], compress.describe_model(model, shape)
  )
  m = engine.load(path, "compiled")
  ref_engine = engine.load(path, "numpy")
  x = np.random.default_rng(3).normal(size=(3, *shape))
  x1 = m.real_conv_sign_packed("conv1", "bn1", x)
  x2 = m.conv_sign_pool("conv2", "bn2", x1)
  f2 = m.fast["conv2"]
  if granularity == "word1":
    assert f2["w"].shape[0] == 1 and f2["flags"][1]
    # one word per pixel (up to 64 input channels), with AVX-512: each output's word picked
    # from the window's 4 x 4 words (simd.window_bits8); else paired taps (up to 32 input
    # channels): each output's word selected in registers
    opts = m.sign_pool_rule("conv2", "bn2", *x1.words.shape[1:])["opts"]
    window = simd.AVX512 and x1.words.shape[-1] == 1
    assert opts[8] == window
    assert opts[7] == (x1.words.shape[-1] == 1 and width == 0.5 and not window)
  elif granularity == "dense":
    assert not any(f2["flags"]) and f2["w"].shape[0] == 9  # 16 or 64 input channels
  apart = m.bn_sign_packed("bn2", m.layer("conv2", x1), pool=True)
  np.testing.assert_array_equal(x2.words, apart.words)
  x3 = m.conv_sign_pool("conv3", "bn3", x2)
  apart = m.bn_sign_packed("bn3", m.layer("conv3", x2), pool=True)
  np.testing.assert_array_equal(x3.words, apart.words)
  # The whole model in one call (batch <= LUT_MAX_BATCH) equals the per-layer path, bit for bit.
  x32 = x.astype(np.float32)
  fits = m.fast["conv3"]["bias"].shape[0] % 64 == 0  # conv3's packed output is fc4's input
  assert (m.conv_chain_plan(*shape) is not None) == fits
  assert fits or (granularity, width) == ("channel", 0.5)
  got = m.logits(x32)
  _, times = m.profile(x32)
  assert list(times) == ["conv1", "conv2", "conv3", "fc4", "out"]
  m.conv_corr[("conv_chain_plan", *shape)] = None  # the per-layer path
  np.testing.assert_array_equal(got, m.logits(x32))
  ref = ref_engine.logits(x32)
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def _word1_model(tmp_path, width=0.5):
  """cnn_small with one kept word per output of conv2 and conv3 (the word format at >= 0.89)."""
  shape = (12, 12, 1)
  model = models.get_model("cnn_small", 5, width=width, **MODES["bnn"])
  v = _signed_bn(_random_variables(model, shape, "word"), ("bn2", "bn3"), seed=11)
  _keep_one_word_per_output(v, np.random.default_rng(12))
  path = str(tmp_path / "m.arsp")
  compress.export(
    path, v["params"], v["masks"], v["batch_stats"], compress.describe_model(model, shape)
  )
  return path, shape


@pytest.mark.skipif(not simd.AVX512, reason="the window permute needs AVX-512F")
@pytest.mark.parametrize("width", [0.5, 2])
def test_window_permute_is_the_reference_path_bit_for_bit(width, tmp_path, monkeypatch):
  """One kept word per output: conv2 and conv3 by the window permute (simd.window_bits8,
  AVX-512) give the bits of the paths without it (paired select / gathered words), and the
  whole model in one call the same logits."""
  path, shape = _word1_model(tmp_path, width)
  m = engine.load(path, "compiled")
  monkeypatch.setattr(compiled, "WINDOW", False)
  ref = engine.load(path, "compiled")
  x = np.random.default_rng(13).normal(size=(5, *shape))
  x1 = m.real_conv_sign_packed("conv1", "bn1", x)
  monkeypatch.setattr(compiled, "WINDOW", True)
  x2 = m.conv_sign_pool("conv2", "bn2", x1)
  x3 = m.conv_sign_pool("conv3", "bn3", x2)
  monkeypatch.setattr(compiled, "WINDOW", False)
  np.testing.assert_array_equal(x2.words, ref.conv_sign_pool("conv2", "bn2", x1).words)
  np.testing.assert_array_equal(x3.words, ref.conv_sign_pool("conv3", "bn3", x2).words)
  for k, r in m.conv_corr.items():
    if k[0] == "sign_pool":  # conv3 at width 2: 128 input channels, 2 words per pixel
      assert r["opts"].window == (k[1] == "conv2" or width == 0.5)
  for k, r in ref.conv_corr.items():
    assert k[0] != "sign_pool" or not r["opts"].window
  x32 = x.astype(np.float32)
  monkeypatch.setattr(compiled, "WINDOW", True)
  got = m.logits(x32)
  monkeypatch.setattr(compiled, "WINDOW", False)
  np.testing.assert_array_equal(got, ref.logits(x32))
  for b in range(x32.shape[0]):
    np.testing.assert_array_equal(got[b : b + 1], ref.logits(x32[b : b + 1]))


FALLBACK = """
import sys
import numpy as np
from arsp_jax.export import compiled, engine, simd
assert not simd.AVX512  # NUMBA_CPU_NAME set: no AVX-512 intrinsic is compiled
compiled.WINDOW = True  # the window path on its scalar fallback
m = engine.load(sys.argv[1], "compiled")
compiled.WINDOW = False
ref = engine.load(sys.argv[1], "compiled")
x = np.random.default_rng(13).normal(size=(3, 12, 12, 1))
x1 = m.real_conv_sign_packed("conv1", "bn1", x)
compiled.WINDOW = True
x2 = m.conv_sign_pool("conv2", "bn2", x1)
x3 = m.conv_sign_pool("conv3", "bn3", x2)
assert all(r["opts"].window for k, r in m.conv_corr.items() if k[0] == "sign_pool")
compiled.WINDOW = False
assert np.array_equal(x2.words, ref.conv_sign_pool("conv2", "bn2", x1).words)
assert np.array_equal(x3.words, ref.conv_sign_pool("conv3", "bn3", x2).words)
print("ok")
"""


@pytest.mark.slow  # make test-all (make test: under 6 minutes on 2 cores)
def test_window_path_without_avx512_compiles_its_scalar_fallback(tmp_path):
  """With numba targeting a CPU without AVX-512 (``NUMBA_CPU_NAME=generic``) the window
  path's AVX-512 intrinsics are never compiled: its scalar fallback runs, with the same bits."""
  import os
  import subprocess
  import sys

  path, _ = _word1_model(tmp_path)
  env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run(
    [sys.executable, "-c", FALLBACK, path], env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.parametrize("name", list(TINY))
def test_every_model_runs_compiled_from_its_graph_bit_for_bit(name, tmp_path):
  """Every architecture, all binary (every hidden layer an integer popcount layer): the export's
  graph runs in both engines with no per-model code, the compiled engine's logits equal the
  numpy reference's bit for bit, and the predictions are the Flax model's."""
  kwargs, shape = TINY[name]
  model = models.get_model(name.replace("_imagenet_stem", ""), 5, **kwargs, **MODES["allbin"])
  v = _random_variables(model, shape, "weight")
  x = np.random.default_rng(2).normal(size=(5, *shape)).astype(np.float32)
  arch = compress.describe_model(model, shape)
  assert arch["graph"]["ops"][-1]["op"] == "output"
  path = str(tmp_path / "m.arsp")
  compress.export(path, v["params"], v["masks"], v["batch_stats"], arch)
  ref, fast = engine.load(path, "numpy"), engine.load(path, "compiled")
  got = fast.logits(x)
  np.testing.assert_array_equal(got, ref.logits(x))
  np.testing.assert_array_equal(got.argmax(-1), _flax_logits(model, v, x).argmax(-1))


class _UserNet(nn.Module):
  """A model the registry does not know, built from the layer types the engines run: a real
  stem, a residual binary conv, a strided binary conv + pool, a flatten, a binary dense and a
  float head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)  # noqa: E731
    x = jnp.clip(bn("stem_bn")(nn.Conv(8, (3, 3), use_bias=False, name="stem")(x)), -1, 1)
    y = BinaryConv(8, kernel_size=(3, 3), binary_inputs=True, name="b1")(x)
    x = jnp.clip(x + bn("b1_bn")(y), -1, 1)
    y = BinaryConv(64, kernel_size=(3, 3), strides=(2, 2), binary_inputs=True, name="b2")(x)
    y = jnp.clip(bn("b2_bn")(nn.max_pool(y, (2, 2), strides=(2, 2))), -1, 1)
    y = BinaryDense(16, binary_inputs=True, name="fc")(y.reshape((y.shape[0], -1)))
    return nn.Dense(5, name="head")(jnp.clip(bn("fc_bn")(y), -1, 1))


def test_a_users_own_model_exports_and_runs_compiled(tmp_path):
  shape = (8, 8, 1)
  model = _UserNet()
  v = _random_variables(model, shape, "weight")
  x = np.random.default_rng(3).normal(size=(4, *shape)).astype(np.float32)
  arch = compress.describe_model(model, shape)
  assert arch["model"] == "_UserNet"
  path = str(tmp_path / "m.arsp")
  compress.export(path, v["params"], v["masks"], v["batch_stats"], arch)
  ref, fast = engine.load(path, "numpy"), engine.load(path, "compiled")
  assert {s.kind for s in fast.steps} == {"op", "sign_pack", "tail"}  # b2 + pool + bn + sign
  want = _flax_logits(model, v, x)
  for eng in (ref, fast):
    got = eng.logits(x)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
