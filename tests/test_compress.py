"""Compression, export and the packed inference engine (arsp_jax.compress / arsp_jax.packed)."""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from arsp_jax import configs as config_lib
from arsp_jax import models
from arsp_jax.export import arrays, compiled, compress, engine, packed, shrink
from arsp_jax.export import bits as bitpack
from arsp_jax.export import summary as report
from arsp_jax.train import evaluate, loop
from tests import util
from tests.util import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny configurations (as in test_models.py) plus the ImageNet-style ResNet stem.
TINY = {
  "mlp": (dict(hidden=(16, 16)), (8, 8, 1)),
  "cnn_small": (dict(width=0.125), (8, 8, 1)),
  "vgg_small": (dict(width=0.0625), (8, 8, 3)),
  "resnet18": (dict(width=8, stage_sizes=(1, 1)), (8, 8, 3)),
  "resnet18_imagenet_stem": (dict(width=8, stage_sizes=(1, 1), small_inputs=False), (16, 16, 3)),
  "resnet50": (dict(width=8, stage_sizes=(1, 2)), (8, 8, 3)),
  "mobilenet_v2": (
    dict(
      width_mult=0.25, last_features=16, small_inputs=False, blocks=((1, 16, 1, 1), (6, 24, 2, 2))
    ),
    (8, 8, 3),
  ),
}
MODES = {
  "real": dict(),  # ReLU, real activations
  "bnn": dict(binary_activations=True, scale=True),  # XNOR: popcount layers
  "allbin": dict(binary_activations=True, binary_first=True, binary_last=True),
}
CASES = (
  [(n, "real", "weight") for n in TINY]
  + [(n, "bnn", "channel") for n in TINY]
  + [("mlp", "allbin", "weight"), ("cnn_small", "allbin", "channel")]
)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _flax_logits(model, v, x):
  return np.asarray(
    jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST)(v, x)
  )


# --------------------------------------------------------------------------- bit packing


def test_pack_bits_round_trip_and_layout():
  rng = np.random.default_rng(0)
  for r in (1, 31, 32, 33, 70, 128):
    bits = rng.random((3, 4, r)) < 0.5
    words = bitpack.pack_bits(bits)
    assert words.dtype == np.uint32 and words.shape == (3, 4, -(-r // 32))
    np.testing.assert_array_equal(bitpack.unpack_bits(words, r), bits)
  # bit j of word i is element 32 i + j (LSB first); padding bits are zero.
  bits = np.zeros(40, bool)
  bits[[0, 5, 33]] = True
  assert bitpack.pack_bits(bits).tolist() == [(1 << 0) | (1 << 5), 1 << 1]


def test_xor_popcount_is_the_dot_product():
  rng = np.random.default_rng(1)
  x = rng.random((5, 100)) < 0.5
  w = rng.random((7, 100)) < 0.5
  m = rng.random((7, 100)) < 0.6
  xs, ws = np.where(x, 1, -1), np.where(w, 1, -1) * m
  xw = arrays.to_u64(bitpack.pack_bits(x))
  pc = arrays.xor_popcount(
    xw, arrays.to_u64(bitpack.pack_bits(w)), arrays.to_u64(bitpack.pack_bits(m))
  )
  np.testing.assert_array_equal(m.sum(1)[None] - 2 * pc, xs @ ws.T)  # K_kept - 2 popcount


# --------------------------------------------------------------------------- mask codes


@pytest.mark.parametrize("density", [0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 0.97, 1.0])
def test_mask_code_round_trip_and_size(density):
  rng = np.random.default_rng(int(density * 100))
  n = 50_000
  m = rng.random(n) < density
  code = bitpack.encode_mask(m)
  back = bitpack.decode_mask(
    code["method"], code["n"], code["count"], code["k"], code["nbits"], code["words"]
  )
  np.testing.assert_array_equal(back, m)
  bound = bitpack.entropy_bound_bits(m)
  assert code["nbits"] <= n  # never worse than a raw bitmap
  assert code["nbits"] <= 1.04 * bound + 64 or code["method"] == "bitmap"
  assert code["nbits"] >= 0.97 * bound - 64  # cannot beat the entropy by much
  assert code["words"].nbytes * 8 - code["nbits"] < 32  # payload is the code, word-padded


def test_layer_encodings():
  rng = np.random.default_rng(2)
  k = rng.uniform(-1, 1, (3, 3, 16, 8)).astype(np.float32)
  meta, arr = compress.encode_binary(k, np.ones_like(k))
  assert meta["encoding"] == "dense" and arr["signs"].shape == (8, 5)  # R = 144 -> 5 words
  ch = np.zeros_like(k)
  ch[..., [1, 4, 5]] = 1
  meta, arr = compress.encode_binary(k, ch)
  assert meta["encoding"] == "channel" and arr["signs"].shape == (3, 5) and "mask" not in arr
  m = (rng.random(k.shape) < 0.1).astype(np.float32)
  meta, arr = compress.encode_binary(k, m)
  assert meta["encoding"] == "sparse" and arr["signs"].nbytes * 8 < 32 * (m.sum() / 32 + 1)
  for mask in (np.ones_like(k), ch, m):
    meta, arr = compress.encode_binary(k, mask)
    dec = compress.decode_binary(meta, arr)
    expect = compress.kernel_matrix(np.where(k >= 0, 1.0, -1.0) * mask)
    np.testing.assert_array_equal(compress.effective_matrix(dec), expect)


# --------------------------------------------------------------------------- engine vs Flax


def _word_mask(rng, s):
  """A random fixed-fan-in word mask of a ``[..., I, O]`` kernel: 30% of each output's
  64-bit words of input channels per tap (at least one)."""
  i, o = s[-2], s[-1]
  taps, iw = int(np.prod(s[:-2])), -(-i // 64)
  f = max(1, round(0.3 * taps * iw))
  keep = np.zeros((taps * iw, o), bool)
  for c in range(o):
    keep[rng.permutation(taps * iw)[:f], c] = True
  m = np.repeat(keep.reshape(taps, iw, o), 64, axis=1)[:, :i]
  return m.reshape(s).astype(np.float32)


def _random_variables(model, shape, granularity, seed=0):
  """Init-structured variables with random weights, masks and batchnorm statistics."""
  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(seed), shape))
  rng = np.random.default_rng(seed)

  def fill(tree, col, last=None):
    if isinstance(tree, dict):
      return {k: fill(x, col, k) for k, x in tree.items()}
    s = np.shape(tree)
    if col == "masks":
      if granularity == "word":
        return _word_mask(rng, s)
      if granularity == "channel":
        keep = rng.random(s[-1]) < 0.5
        keep[0] = True
        return np.broadcast_to(keep, s).astype(np.float32).copy()
      return (rng.random(s) < 0.3).astype(np.float32)
    if col == "batch_stats":
      return (rng.uniform(0.5, 2.0, s) if last == "var" else rng.normal(0, 0.5, s)).astype(
        np.float32
      )
    if last == "kernel":
      return rng.uniform(-1, 1, s).astype(np.float32)
    if last == "scale":
      return rng.uniform(0.5, 1.5, s).astype(np.float32)
    return rng.normal(0, 0.1, s).astype(np.float32)

  return {c: fill(v[c], c) for c in v}


def _check_engines(model, v, shape, tmp_path, batch=48):
  """Exports ``v``; both engines' logits against the Flax model's. Returns (header, engines)."""
  x = np.random.default_rng(1).normal(size=(batch, *shape)).astype(np.float32)
  ref = _flax_logits(model, v, x)
  arch = compress.describe_model(model, shape)
  path = str(tmp_path / "m.arsp")
  header = compress.export(path, v["params"], v["masks"], v["batch_stats"], arch)
  engines = {name: engine.load(path, name) for name in ("numpy", "compiled")}
  assert type(engines["compiled"]) is compiled.CompiledModel
  for name, eng in engines.items():
    for batch_size in (16, 4):  # compiled: BLAS and table paths of real-input layers
      got = eng.logits(x, batch_size=batch_size)
      np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1), err_msg=name)
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name)
  return header, engines


@pytest.mark.parametrize("name,mode,granularity", CASES, ids=[f"{n}-{m}-{g}" for n, m, g in CASES])
def test_engines_match_flax_every_architecture(name, mode, granularity, tmp_path):
  kwargs, shape = TINY[name]
  arch_name = name.replace("_imagenet_stem", "")
  model = models.get_model(arch_name, 5, **kwargs, **MODES[mode])
  v = _random_variables(model, shape, granularity)
  header, engines = _check_engines(model, v, shape, tmp_path)
  encs = {l["encoding"] for l in header["layers"].values() if l["kind"] == "binary"}
  assert (
    encs == {"sparse"}
    if granularity == "weight"
    else ("channel" in encs and encs <= {"channel", "dense"})
  )
  if granularity == "channel":  # stored physically smaller: kept output channels only
    for n, d in engines["numpy"].binary.items():
      if header["layers"][n]["encoding"] != "channel":
        continue
      assert d["channels"] is not None and len(d["channels"]) < d["O"]
      assert d["eff"].shape[0] == len(d["channels"])
  fast = [f for f in engines["compiled"].fast.values() if f is not None]
  assert fast or mode == "real"  # the compiled kernels ran (BNN modes: popcount layers)


WORD_CASES = [
  ("mlp", dict(hidden=(130, 70)), (16, 16, 1), "bnn"),
  ("mlp", dict(hidden=(130, 70)), (16, 16, 1), "allbin"),
  ("cnn_small", dict(width=0.125), (8, 8, 1), "bnn"),
  ("resnet18", dict(width=8, stage_sizes=(1, 1)), (8, 8, 3), "bnn"),
]


@pytest.mark.parametrize(
  "name,kwargs,shape,mode", WORD_CASES, ids=[f"{c[0]}-{c[3]}" for c in WORD_CASES]
)
def test_word_format_runs_as_fixed_fan_in(name, kwargs, shape, mode, tmp_path, monkeypatch):
  """Word masks are stored as fixed fan-in words and run gathered, without a mask AND; the
  multi-threaded kernels (forced here on tiny layers) give the same logits."""
  monkeypatch.setattr(compiled, "PARALLEL_MIN_WORDS", 0 if mode == "bnn" else 1 << 20)
  model = models.get_model(name, 5, **kwargs, **MODES[mode])
  v = _random_variables(model, shape, "word")
  header, engines = _check_engines(model, v, shape, tmp_path, batch=12)
  word = [n for n, l in header["layers"].items() if l.get("encoding") == "word"]
  assert word and {l.get("encoding") for l in header["layers"].values()} <= {
    "word",
    "dense",
    None,
  }
  gathered = 0
  for n in word:
    f = engines["compiled"].fast[n]
    if f is not None and "w" in f and f["flags"][1]:  # gathered: the kept words only
      assert not f["flags"][0]  # whole words: no mask AND
      assert f["w"].shape[0] == header["layers"][n]["fan_in_words"]  # [F, O]
      gathered += 1
  assert gathered


SHRINK_CASES = [(n, m) for n in ("mlp", "cnn_small", "vgg_small") for m in ("real", "bnn")]


@pytest.mark.parametrize("name,mode", SHRINK_CASES, ids=[f"{n}-{m}" for n, m in SHRINK_CASES])
def test_channel_pruning_shrinks_the_next_layer(name, mode, tmp_path):
  """After a channel-pruned layer the next layer is stored without the pruned inputs (their
  constant contribution folded into ``input_const``), the pruned layer and its batchnorm
  keep only the kept channels, and both engines still match Flax."""
  kwargs, shape = TINY[name]
  model = models.get_model(name, 5, **kwargs, **MODES[mode])
  v = _random_variables(model, shape, "channel")
  header, engines = _check_engines(model, v, shape, tmp_path)
  layers = header["layers"]
  compact = [n for n, l in layers.items() if l.get("compact")]
  assert compact
  for a, bn, b in shrink.chains(header["arch"]):
    if a not in compact:
      continue
    kept = layers[a]["kept_channels"]
    assert engines["numpy"].bn[bn][0].shape == (kept,)  # batchnorm of the kept channels
    full_in = int(np.prod(v["params"][b]["kernel"].shape[:-1]))
    r = layers[b]["R"] if layers[b]["kind"] == "binary" else int(np.prod(layers[b]["shape"][:-1]))
    assert r < full_in and r % kept == 0  # inputs of the pruned channels dropped
    loaded = compress.load(str(tmp_path / "m.arsp"))
    const = loaded["binary" if layers[b]["kind"] == "binary" else "real"][b]["input_const"]
    # with binary inputs and weights the dropped inputs' contribution is an exact integer,
    # stored as one (int8 here: tiny layers)
    binary_inputs = layers[b]["kind"] == "binary" and mode == "bnn"
    assert const.dtype == (np.int8 if binary_inputs else np.float32), (b, const.dtype)
  # results.json's size (model_summary with the architecture) is the export's exactly; without
  # the architecture it is the size before the shrink (the dropped inputs counted, no
  # input_const).
  scale = {l["name"] for l in header["arch"]["layers"] if l.get("scale")}
  size = report.model_summary(v["params"], v["masks"], v["batch_stats"], scale, header["arch"])
  assert size["encoded_bits"] == header["sizes"]["encoded_bits"] == header["payload_bits"]
  unshrunk = report.model_summary(v["params"], v["masks"], v["batch_stats"], scale)
  assert unshrunk["encoded_bits"] != size["encoded_bits"]


def test_loader_and_engine_need_numpy_only(tmp_path):
  kwargs, shape = TINY["cnn_small"]
  model = models.get_model("cnn_small", 5, **kwargs, **MODES["bnn"])
  v = _random_variables(model, shape, "weight")
  x = np.random.default_rng(3).normal(size=(4, *shape)).astype(np.float32)
  path = str(tmp_path / "m.arsp")
  compress.export(
    path, v["params"], v["masks"], v["batch_stats"], compress.describe_model(model, shape)
  )
  np.save(tmp_path / "x.npy", x)
  code = (
    "import sys, numpy as np\n"
    "from arsp_jax.export import engine, packed\n"
    f"m = packed.PackedModel.from_file({path!r})\n"
    f"np.save({str(tmp_path / 'y.npy')!r}, m.logits(np.load({str(tmp_path / 'x.npy')!r})))\n"
    f"c = engine.load({path!r})\n"  # the compiled engine: numpy + numba
    "assert type(c).__name__ == 'CompiledModel'\n"
    f"np.save({str(tmp_path / 'z.npy')!r}, c.logits(np.load({str(tmp_path / 'x.npy')!r})))\n"
    "bad = [k for k in sys.modules if k.split('.')[0] in ('jax', 'jaxlib', 'flax')]\n"
    "assert not bad, bad\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
  )
  assert proc.returncode == 0, proc.stderr
  ref = _flax_logits(model, v, x)
  np.testing.assert_array_equal(np.load(tmp_path / "y.npy").argmax(-1), ref.argmax(-1))
  np.testing.assert_array_equal(np.load(tmp_path / "z.npy").argmax(-1), ref.argmax(-1))


# --------------------------------------------------------------------------- sizes


def test_model_summary_sizes():
  kwargs, shape = TINY["mlp"]
  model = models.get_model("mlp", 5, **kwargs)
  v = _random_variables(model, shape, "weight")
  s = report.model_summary(v["params"], v["masks"], v["batch_stats"])
  n_bin = 64 * 16 + 16 * 16
  assert s["prunable_connections"] == n_bin
  assert s["dense_bnn_bits"] < s["float32_bits"]
  enc = compress.size_summary(v["params"], v["masks"], v["batch_stats"])
  assert s["encoded_bits"] == enc["encoded_bits"]
  assert s["compression_vs_float32"] == pytest.approx(s["float32_bits"] / s["encoded_bits"])
  assert s["compression_vs_dense_bnn"] == pytest.approx(s["dense_bnn_bits"] / s["encoded_bits"])
  for e in enc["layers"].values():  # each close to its entropy bound (30% density)
    assert e["encoding"] == "sparse"
    assert e["bits"] <= 1.15 * e["entropy_bound_bits"] + 96
  assert "encoded (as exported)" in report.format_summary(s)


# --------------------------------------------------------------------------- real run


@pytest.fixture(scope="session")  # built once per worker, not per module visit
def fmnist_run(tmp_path_factory):
  if not os.path.exists(os.path.join(util.SYSTEM_FMNIST, util.FMNIST_FILES["train_images"])):
    pytest.skip("Debian's dataset-fashion-mnist is not installed")
  tmp = tmp_path_factory.mktemp("fm_export")
  data_dir = util.write_fmnist_subset(tmp / "fm", n_train=640, n_test=1000)
  cfg = tiny_config(dataset="fashion_mnist", data_dir=data_dir, epochs=2)
  cfg.dataset_kwargs = ml_collections.ConfigDict()
  wd = str(tmp / "wd")
  res = loop.run(cfg, wd, progress=False, log=lambda *_: None)
  return wd, res, tmp


def test_export_of_trained_fashion_mnist_run(fmnist_run):
  wd, res, tmp = fmnist_run
  path = str(tmp / "model.arsp")
  out = evaluate.evaluate_workdir(wd, export=path)
  ex = out["export"]
  assert os.path.getsize(path) == ex["file_bytes"]
  assert ex["examples"] == 1000
  assert ex["predictions_differ"] == 0  # bit-exact predictions
  assert ex["engine_accuracy"] == ex["flax_accuracy"] == pytest.approx(out["accuracy"])
  assert ex["engine_accuracy"] == pytest.approx(res["test_accuracy"])
  size = res["size"]  # results.json sizes
  assert size["encoded_bits"] == ex["sizes"]["encoded_bits"] == ex["payload_bits"]
  # At 70% sparsity the mask costs more than it saves (bound 0.3 + H(0.3) = 1.18 bits/weight).
  bound = sum(l["entropy_bound_bits"] for l in ex["sizes"]["layers"].values())
  n_bin = sum(l["connections"] for l in ex["sizes"]["layers"].values())
  assert bound / n_bin <= size["binary_bits_per_weight"] <= 1.03 * bound / n_bin + 0.01
  assert size["compression_vs_float32"] == pytest.approx(
    size["float32_bits"] / size["encoded_bits"]
  )
  assert size["compression_vs_dense_bnn"] == pytest.approx(
    size["dense_bnn_bits"] / size["encoded_bits"]
  )
  text = evaluate.format_eval(out)
  assert "packed engine accuracy" in text and "predictions equal" in text
  # The compiled engine checked the export and its latency is printed next to the size.
  assert ex["engine"] == "CompiledModel" and [r["batch"] for r in ex["latency"]] == [1, 64]
  assert all(r["median_ms"] > 0 for r in ex["latency"]) and "latency (CompiledModel" in text
  # The export alone, loaded with numpy: same predictions as the Flax model on raw pixels.
  engine = packed.PackedModel.from_file(path)
  raw = util.read_idx(os.path.join(tmp, "fm", util.FMNIST_FILES["test_images"]))[..., None]
  assert np.mean(
    engine.predict(engine.preprocess(raw))
    == util.read_idx(os.path.join(tmp, "fm", util.FMNIST_FILES["test_labels"]))
  ) == pytest.approx(ex["engine_accuracy"])


def test_export_user_errors(fmnist_run, tmp_path):
  wd, _, _ = fmnist_run
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    evaluate.evaluate_workdir(wd, export=str(tmp_path / "missing" / "m.arsp"))
  with pytest.raises(config_lib.ConfigError, match="is a directory"):
    evaluate.evaluate_workdir(wd, export=str(tmp_path))
  empty = tmp_path / "empty_run"
  empty.mkdir()
  (empty / "config.json").write_text("{}")
  from arsp_jax.train import checkpoint

  with pytest.raises(checkpoint.CheckpointError):
    evaluate.evaluate_workdir(str(empty), export=str(tmp_path / "m.arsp"))
  with pytest.raises(compress.ExportError):
    compress.load(str(tmp_path / "empty_run" / "config.json"))
