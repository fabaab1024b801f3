"""Tests for the model zoo (arsp_jax.models + arsp_jax.cnn) at tiny, CPU-cheap sizes.

Cost control: XLA:CPU compilation dominates here, so

* structural checks use ``jax.eval_shape`` (tracing only, no compilation);
* numerical checks use variables with the exact structure of ``init_variables``
  filled by NumPy (lecun-uniform kernels, BN scale 1 / bias 0, running mean 0 /
  var 1, masks 1) -- real ``init_variables`` values are checked on the cheap
  models only;
* each (model, mode) compiles exactly two functions: an eval pass and a train
  pass that also returns gradients (cached across tests), with cheap XLA
  backend options;
* test-side array manipulation is NumPy, not eager JAX.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from arsp_jax import models
from arsp_jax.models.binary import BinaryConv, BinaryDense

NUM_CLASSES = 5
BATCH = 8  # divisible by the 8 fake devices (test_sharded_batch_stats_are_global)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Tiny configuration and input shape (H, W, C) for every registered model; each
# still exercises its distinctive paths (ResNet: identity and downsampling
# shortcuts, bottleneck channel repeat/average shortcuts; MobileNetV2: t == 1
# block, residual and strided blocks).  A newly registered model must be added.
TINY = {
  "mlp": (dict(hidden=(16, 16)), (8, 8, 1)),
  "cnn_small": (dict(width=0.125), (8, 8, 1)),
  "vgg_small": (dict(width=0.0625), (8, 8, 3)),
  "resnet18": (dict(width=8, stage_sizes=(1, 1)), (8, 8, 3)),
  "resnet50": (dict(width=8, stage_sizes=(1, 2)), (8, 8, 3)),
  "mobilenet_v2": (
    dict(
      width_mult=0.25, last_features=16, small_inputs=False, blocks=((1, 16, 1, 1), (6, 24, 2, 2))
    ),
    (8, 8, 3),
  ),
}
FIRST = {name: "conv1" for name in TINY} | {"mlp": "fc1"}
LAST = "out"
NAMES = sorted(models.MODELS)
# Numerical tests run with bn_momentum=0 (a train pass re-estimates the running
# stats exactly), in two corners of the options: real activations without
# scaling, and BNN (sign activations with STE) with XNOR scaling.
MODES = {
  "real": dict(bn_momentum=0.0),
  "bnn": dict(bn_momentum=0.0, binary_activations=True, scale=True),
}


def _tiny_model(name: str, **overrides) -> nn.Module:
  kwargs, _ = TINY[name]
  return models.get_model(name, NUM_CLASSES, **{**kwargs, **overrides})


def _abstract_variables(model: nn.Module, shape):
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))


def _binary_layer_paths(model: nn.Module, shape) -> list[tuple[str, ...]]:
  """Paths of the BinaryConv/BinaryDense modules in call order (found by interception)."""
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (BinaryConv, BinaryDense)):
      seen.append(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    _abstract_variables(model, shape)
  return seen


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  """Functional update of a nested dict at ``path``."""
  if not path:
    return value
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def _fill(abstract, seed: int = 0):
  """Concrete variables with ``abstract``'s structure, init-like values, by NumPy."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    col, last = path[0].key, path[-1].key
    if col == "masks" or (col == "batch_stats" and last == "var") or last == "scale":
      return np.ones(s.shape, s.dtype)
    if last == "kernel":
      bound = np.sqrt(3.0 / np.prod(s.shape[:-1]))
      return rng.uniform(-bound, bound, s.shape).astype(s.dtype)
    return np.zeros(s.shape, s.dtype)  # biases, running means

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _images(shape, batch: int = BATCH, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)


def _maxabs(a) -> float:
  return float(np.max(np.abs(np.asarray(a))))


class Harness:
  """A tiny model with variables, inputs and its two compiled passes."""

  def __init__(self, name: str, mode: str):
    self.name, self.mode = name, mode
    self.model = _tiny_model(name, **MODES[mode])
    self.shape = TINY[name][1]
    self.variables = _fill(_abstract_variables(self.model, self.shape))
    self.x = _images(self.shape)
    self.labels = np.arange(BATCH) % NUM_CLASSES
    self.binary_paths = _binary_layer_paths(self.model, self.shape)
    model = self.model

    first = FIRST[name]

    def eval_fn(v, x):  # captures the (pre-BN) outputs of the binary layers
      return model.apply(
        v,
        x,
        train=False,
        mutable=["intermediates"],
        capture_intermediates=lambda m, _: isinstance(m, (BinaryConv, BinaryDense)),
      )

    def loss(params, v, x, labels):
      logits, state = model.apply(
        {**v, "params": params},
        x,
        train=True,
        capture_intermediates=lambda m, _: m.name == first,
        mutable=["batch_stats", "intermediates"],
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits, state)

    def train_fn(v, x, labels):
      """-> (grads w.r.t. params, (logits, {'batch_stats', 'intermediates'}))."""
      return jax.grad(loss, has_aux=True)(v["params"], v, x, labels)

    self.eval = jax.jit(eval_fn, compiler_options=FAST)
    self.train = jax.jit(train_fn, compiler_options=FAST)


@functools.cache
def _harness(name: str, mode: str) -> Harness:
  return Harness(name, mode)


def harness(name: str, mode: str = "real") -> Harness:
  """Cached per (name, mode); the wrapper keeps the cache key positional and complete."""
  return _harness(name, mode)


# --------------------------------------------------------------------------- registry


def test_registry_contents():
  assert {"mlp", "vgg_small", "resnet18", "resnet50", "mobilenet_v2", "cnn_small"} <= set(NAMES)
  assert set(NAMES) == set(TINY), "add a tiny configuration for every registered model"


def test_get_model_errors():
  with pytest.raises(ValueError, match="Unknown model"):
    models.get_model("nope", 10)
  with pytest.raises(ValueError, match="no option"):
    models.get_model("resnet18", 10, depth=3)


@pytest.mark.parametrize("name", NAMES)
def test_common_fields(name):
  fields = models.MODELS[name].__dataclass_fields__
  for f in (
    "num_classes",
    "binary_activations",
    "scale",
    "bn_momentum",
    "clip",
    "binary_first",
    "binary_last",
  ):
    assert f in fields, f
  if name != "mlp":  # the CNNs: full-precision first/last layers, real activations, no scale
    for f in ("binary_first", "binary_last", "binary_activations", "scale"):
      assert fields[f].default is False, f


def test_import_cnn_first_registers():
  """Importing arsp_jax.models.cnn before arsp_jax.models must not trip the circular import."""
  code = (
    "import arsp_jax.models.cnn\nfrom arsp_jax.models import MODELS\n"
    "assert {'vgg_small','resnet18','resnet50','mobilenet_v2','cnn_small'} <= set(MODELS)"
  )
  subprocess.run(
    [sys.executable, "-c", code],
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    cwd=str(pathlib.Path(__file__).resolve().parents[1]),
  )


# --------------------------------------------------------------------------- structure (eval_shape only)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  "name,num_classes,shape,expected",
  [
    ("resnet18", 1000, (224, 224, 3), 11_689_512),  # == torchvision resnet18
    ("mobilenet_v2", 1000, (224, 224, 3), 3_504_872),  # == torchvision mobilenet_v2
    ("vgg_small", 10, (32, 32, 3), 4_660_106),
  ],
)
def test_default_parameter_counts(name, num_classes, shape, expected):
  model = models.get_model(name, num_classes)
  v = _abstract_variables(model, shape)
  assert _count(v["params"]) == expected


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_small_inputs_auto(name):
  model = models.get_model(name, 10, **{**TINY[name][0], "small_inputs": None})
  for hw, kernel_hw in ((32, 3), (96, 3 if name == "mobilenet_v2" else 7)):
    v = _abstract_variables(model, (hw, hw, 3))
    assert v["params"]["conv1"]["kernel"].shape[:2] == (kernel_hw, kernel_hw)
  # The ImageNet stem path (strided stem, max-pool for the ResNets) end to end.
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 96, 96, 3))), v)
  chex.assert_shape(out, (2, 10))
  big = models.get_model("resnet18", 10, width=8, small_inputs=False)
  assert _abstract_variables(big, (32, 32, 3))["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)


def test_resnet_shortcuts():
  v = _abstract_variables(models.get_model("resnet18", 10, width=8), (8, 8, 3))
  downs = [k for k in v["params"] if k.endswith("_down_conv")]
  assert downs == ["stage2_block1_down_conv", "stage3_block1_down_conv", "stage4_block1_down_conv"]
  for k in downs:  # real-valued downsampling shortcut: 1x1 conv + BN, never pruned
    assert k not in v["masks"] and v["params"][k]["kernel"].shape[:2] == (1, 1)
    assert k.replace("_conv", "_bn") in v["batch_stats"]
  assert len(v["masks"]) == 16  # Bi-Real: 2 binary 3x3 convs per basic block, 8 blocks
  # Bottleneck: channel changes at stride 1 use parameter-free shortcuts.
  v = _abstract_variables(models.get_model("resnet50", 10, width=8), (8, 8, 3))
  assert len(v["masks"]) == 48 and not [k for k in v["params"] if "_proj" in k]
  assert len([k for k in v["params"] if k.endswith("_down_conv")]) == 3


def test_mobilenet_depthwise_masks():
  model = models.get_model("mobilenet_v2", 10, width_mult=0.25)
  v = _abstract_variables(model, (32, 32, 3))
  dws = [k for k in v["masks"] if k.endswith("_dw")]
  assert len(dws) == 17
  for k in dws:
    shape = v["masks"][k]["kernel"].shape
    assert shape[:3] == (3, 3, 1) and v["params"][k]["kernel"].shape == shape
  assert "block1_expand" not in v["params"]  # t == 1: no expansion conv
  assert v["masks"]["block2_expand"]["kernel"].shape == (1, 1, 8, 48)


@pytest.mark.parametrize("name", NAMES)
def test_masks_mirror_binary_kernels(name):
  shape = TINY[name][1]
  for binary_ends in (False, True):
    model = _tiny_model(name, binary_first=binary_ends, binary_last=binary_ends)
    v = _abstract_variables(model, shape)
    binary = _binary_layer_paths(model, shape)
    leaf_paths = jax.tree_util.tree_leaves_with_path(v["masks"])
    assert {tuple(k.key for k in p[:-1]) for p, _ in leaf_paths} == set(binary)
    for path in binary:
      assert set(_get(v["masks"], path)) == {"kernel"}
      m, k = _get(v["masks"], path)["kernel"], _get(v["params"], path)["kernel"]
      assert m.shape == k.shape and m.dtype == jnp.float32
    for layer in (FIRST[name], LAST):
      assert layer in v["params"]
      assert (layer in v["masks"]) == binary_ends, layer
  # Hidden layers are binary in every model.
  assert len(binary) >= 3


@pytest.mark.parametrize("name", ["mlp", "cnn_small"])
def test_real_init_variables(name):
  model = _tiny_model(name)
  v = jax.jit(lambda r: models.init_variables(model, r, TINY[name][1]), compiler_options=FAST)(
    jax.random.key(0, impl="rbg")
  )
  chex.assert_trees_all_equal_shapes_and_dtypes(v, _abstract_variables(model, TINY[name][1]))
  chex.assert_trees_all_equal(v["masks"], jax.tree.map(np.ones_like, v["masks"]))
  for path in _binary_layer_paths(model, TINY[name][1]):
    k = np.asarray(_get(v["params"], path)["kernel"])
    assert np.all(np.abs(k) <= 1.0) and k.std() > 0  # latent weights within the STE range


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_batchnorm(name):
  h = harness(name)
  v, x = h.variables, h.x
  out, _ = h.eval(v, x)
  chex.assert_shape(out, (BATCH, NUM_CLASSES))
  chex.assert_tree_all_finite(out)
  _, (tr, state) = h.train(v, x, h.labels)
  chex.assert_shape(tr, (BATCH, NUM_CLASSES))
  # Train mode returns updated batch statistics (every BN), same structure.
  stats = state["batch_stats"]
  chex.assert_trees_all_equal_shapes(stats, v["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), stats, v["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # bn_momentum=0: running stats of bn1 == the batch statistics of the first layer's output.
  first = np.asarray(state["intermediates"][FIRST[name]]["__call__"][0])
  axes = tuple(range(first.ndim - 1))
  chex.assert_trees_all_close(stats["bn1"]["mean"], first.mean(axes), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(stats["bn1"]["var"], first.var(axes), atol=1e-5, rtol=1e-4)
  # ... hence an eval pass with the re-estimated stats reproduces the train pass.
  ev, _ = h.eval({**v, "batch_stats": stats}, x)
  chex.assert_trees_all_close(ev, tr, atol=1e-4, rtol=1e-4)
  # Eval: each example's output is independent of the rest of the batch; train: it is not.
  x2 = x.copy()
  x2[2:] = _images(h.shape, batch=BATCH - 2, seed=9)
  chex.assert_trees_all_close(h.eval(v, x2)[0][:2], out[:2], atol=1e-5, rtol=1e-5)
  assert _maxabs(h.train(v, x2, h.labels)[1][0][:2] - tr[:2]) > 1e-4
  # Eval uses the running averages, train does not.
  shifted = {**v, "batch_stats": jax.tree.map(lambda s: s + 0.5, v["batch_stats"])}
  assert _maxabs(h.eval(shifted, x)[0] - out) > 1e-4
  chex.assert_trees_all_close(h.train(shifted, x, h.labels)[1][0], tr, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", NAMES)
def test_masked_connections_have_no_effect(name, mode):
  h = harness(name, mode)
  v, x, paths = h.variables, h.x, h.binary_paths
  rng = np.random.default_rng(2)
  for path in dict.fromkeys((paths[0], paths[len(paths) // 2], paths[-1])):
    kernel = np.asarray(_get(v["params"], path)["kernel"])
    mask = (rng.random(kernel.shape) < 0.5).astype(np.float32)
    vm = {**v, "masks": _set(v["masks"], path + ("kernel",), mask)}
    ref = np.asarray(h.eval(vm, x)[0])
    # Masked positions: flip every sign and change magnitudes -> bit-identical outputs.
    pert = np.where(mask == 0, -kernel - 0.3 * np.sign(kernel) - 0.05, kernel).astype(np.float32)
    assert np.any((mask == 0) & (np.sign(pert) != np.sign(kernel)))
    vp = {**vm, "params": _set(v["params"], path + ("kernel",), pert)}
    np.testing.assert_array_equal(np.asarray(h.eval(vp, x)[0]), ref)
    # Kept positions: flipping the signs of some kept weights changes the output.
    flip = (rng.random(kernel.shape) < 0.5) & (mask == 1)
    vk = {**vm, "params": _set(v["params"], path + ("kernel",), np.where(flip, -kernel, kernel))}
    assert _maxabs(h.eval(vk, x)[0] - ref) > 1e-6, path


@pytest.mark.parametrize("name", NAMES)
def test_zero_channel_mask_zeroes_preactivation(name):
  h = harness(name)
  v, paths = h.variables, h.binary_paths
  channel = 1
  for path in (paths[0], paths[-1]):  # hidden binary layers, no bias
    kernel = _get(v["params"], path)["kernel"]
    mask = np.ones(kernel.shape, np.float32)
    mask[..., channel] = 0.0
    vm = {**v, "masks": _set(v["masks"], path + ("kernel",), mask)}
    _, state = h.eval(vm, h.x)
    pre_bn = np.asarray(_get(state["intermediates"], path)["__call__"][0])
    assert pre_bn.shape[-1] == kernel.shape[-1]
    np.testing.assert_array_equal(pre_bn[..., channel], 0.0)
    assert _maxabs(np.delete(pre_bn, channel, axis=-1)) > 0.0


# BNN-mode gradients (sign-activation STE) on a few models only: every model's
# binary layers binarize their inputs through the same BinaryConv/BinaryDense
# code, and the backward pass is what costs the most to compile on CPU.
GRAD_CASES = [(n, "real") for n in NAMES] + [(n, "bnn") for n in ("mlp", "cnn_small", "resnet18")]


@pytest.mark.parametrize("name,mode", GRAD_CASES)
def test_gradients_ste_and_masked(name, mode):
  h = harness(name, mode)
  rng = np.random.default_rng(3)
  masks = jax.tree.map(
    lambda m: (rng.random(m.shape) < 0.5).astype(np.float32), h.variables["masks"]
  )
  vm = {**h.variables, "masks": masks}
  grads, _ = h.train(vm, h.x, h.labels)
  chex.assert_trees_all_equal_structs(grads, vm["params"])
  chex.assert_tree_all_finite(grads)
  for path in h.binary_paths:
    g = np.asarray(_get(grads, path)["kernel"])
    mask = _get(masks, path)["kernel"]
    np.testing.assert_array_equal(g[mask == 0], 0.0)  # pruned: exactly zero
    assert np.max(np.abs(g[mask == 1])) > 0.0, path  # kept: STE gradient reaches w
  for layer in (FIRST[name], LAST):  # full-precision ends
    assert _maxabs(grads[layer]["kernel"]) > 0.0


def test_sharded_batch_stats_are_global():
  """Train pass jitted over a batch sharded on 8 devices == unsharded (global BN statistics,
  no axis_name needed)."""
  h = harness("cnn_small")
  mesh = Mesh(np.array(jax.devices()), ("data",))
  train_fwd = jax.jit(
    functools.partial(h.model.apply, train=True, mutable=["batch_stats"]), compiler_options=FAST
  )
  logits_s, state_s = train_fwd(
    jax.device_put(h.variables, NamedSharding(mesh, P())),
    jax.device_put(h.x, NamedSharding(mesh, P("data"))),
  )
  assert len(logits_s.sharding.device_set) == 8
  _, (logits, state) = h.train(h.variables, h.x, h.labels)
  chex.assert_trees_all_close(logits_s, logits, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(state_s["batch_stats"], state["batch_stats"], atol=1e-5, rtol=1e-4)
