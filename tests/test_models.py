"""Tests for the model zoo (arsp_jax.models + arsp_jax.cnn) at tiny, CPU-cheap sizes."""

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arsp_jax import models
from arsp_jax.binary import BinaryConv, BinaryDense

NUM_CLASSES = 5
BATCH = 4

# Tiny configuration and input shape (H, W, C) for every registered model.  A
# newly registered model must be added here (test_every_model_has_tiny_config).
TINY = {
    "mlp": (dict(hidden=(16, 16)), (8, 8, 1)),
    "cnn_small": (dict(width=0.125), (8, 8, 1)),
    "vgg_small": (dict(width=0.0625), (8, 8, 3)),
    "resnet18": (dict(width=8), (8, 8, 3)),
    "resnet50": (dict(width=8, stage_sizes=(1, 2, 1, 1)), (8, 8, 3)),
    "mobilenet_v2": (dict(width_mult=0.25, last_features=32,
                          blocks=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2))), (8, 8, 3)),
}
FIRST = {name: "conv1" for name in TINY} | {"mlp": "fc1"}
LAST = "out"
NAMES = sorted(models.MODELS)
# "bnn": binary activations (sign STE) + XNOR scaling, the other corner of the options.
MODES = {"real_act": {}, "bnn": dict(binary_activations=True, scale=True)}


def _tiny_model(name: str, **overrides) -> nn.Module:
  kwargs, _ = TINY[name]
  return models.get_model(name, NUM_CLASSES, **{**kwargs, **overrides})


def _images(name: str, batch: int = BATCH, seed: int = 1) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, *TINY[name][1]), jnp.float32)


def _binary_layer_paths(model: nn.Module, shape) -> list[tuple[str, ...]]:
  """Paths of the BinaryConv/BinaryDense modules, in call order (found by interception)."""
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (BinaryConv, BinaryDense)):
      seen.append(context.module.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
  return seen


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  """Functional update of a nested dict at ``path``."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _set(tree[path[0]], path[1:], value)
  return out


@functools.lru_cache(maxsize=None)
def _setup(name: str, mode: str = "real_act", **overrides):
  """(model, variables, images, jitted apply, binary layer paths); cached per config."""
  model = _tiny_model(name, **MODES[mode], **overrides)
  shape = TINY[name][1]
  variables = jax.jit(lambda rng: models.init_variables(model, rng, shape))(jax.random.PRNGKey(0))
  apply = jax.jit(model.apply, static_argnames=("train", "mutable", "capture_intermediates"))
  paths = _binary_layer_paths(model, shape)
  return model, variables, _images(name), apply, paths


def _random_half_masks(variables, key):
  """Zero a random half of every mask."""
  leaves, treedef = jax.tree.flatten(variables["masks"])
  keys = jax.random.split(key, len(leaves))
  new = [jax.random.bernoulli(k, 0.5, m.shape).astype(m.dtype) for k, m in zip(keys, leaves)]
  return {**variables, "masks": jax.tree.unflatten(treedef, new)}


# --------------------------------------------------------------------------- registry


def test_registry_contents():
  assert {"mlp", "vgg_small", "resnet18", "resnet50", "mobilenet_v2", "cnn_small"} <= set(NAMES)


def test_every_model_has_tiny_config():
  assert set(NAMES) == set(TINY)


def test_get_model_errors():
  with pytest.raises(ValueError, match="Unknown model"):
    models.get_model("nope", 10)
  with pytest.raises(ValueError, match="no option"):
    models.get_model("resnet18", 10, depth=3)


@pytest.mark.parametrize("name", NAMES)
def test_common_fields(name):
  fields = models.MODELS[name].__dataclass_fields__
  for f in ("num_classes", "binary_activations", "scale", "bn_momentum", "clip", "binary_first",
            "binary_last"):
    assert f in fields, f


def test_import_cnn_first_registers():
  """Importing arsp_jax.cnn before arsp_jax.models must not trip the circular import."""
  code = ("import arsp_jax.cnn\nfrom arsp_jax.models import MODELS\n"
          "assert {'vgg_small','resnet18','resnet50','mobilenet_v2','cnn_small'} <= set(MODELS)")
  subprocess.run([sys.executable, "-c", code], check=True,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"},
                 cwd=str(pathlib.Path(__file__).resolve().parents[1]))


# --------------------------------------------------------------------------- structure (eval_shape only)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,num_classes,shape,expected", [
    ("resnet18", 1000, (224, 224, 3), 11_689_512),      # == torchvision resnet18
    ("mobilenet_v2", 1000, (224, 224, 3), 3_504_872),   # == torchvision mobilenet_v2
    ("vgg_small", 10, (32, 32, 3), 4_660_106),
])
def test_default_parameter_counts(name, num_classes, shape, expected):
  model = models.get_model(name, num_classes)
  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
  assert _count(v["params"]) == expected


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_small_inputs_auto(name):
  model = models.get_model(name, 10, **TINY[name][0])
  for hw, kernel_hw in ((32, 3), (96, 3 if name == "mobilenet_v2" else 7)):
    v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), (hw, hw, 3)))
    assert v["params"]["conv1"]["kernel"].shape[:2] == (kernel_hw, kernel_hw)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, hw, hw, 3))), v)
    chex.assert_shape(out, (2, 10))
  # Forcing small_inputs=False on a small image uses the ImageNet stem.
  big = models.get_model("resnet18", 10, width=8, small_inputs=False)
  v = jax.eval_shape(lambda: models.init_variables(big, jax.random.PRNGKey(0), (32, 32, 3)))
  assert v["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)


def test_resnet_downsampling_shortcuts_are_full_precision():
  model = _tiny_model("resnet18")
  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 3)))
  downs = [k for k in v["params"] if k.endswith("_down_conv")]
  assert downs == ["stage2_block1_down_conv", "stage3_block1_down_conv", "stage4_block1_down_conv"]
  for k in downs:
    assert k not in v["masks"]
    assert v["params"][k]["kernel"].shape[:2] == (1, 1)
  # Bi-Real: one shortcut per binary conv -> 2 binary convs per basic block, 4 stages x 2 blocks.
  assert len(v["masks"]) == 16


def test_mobilenet_depthwise_masks():
  model = _tiny_model("mobilenet_v2")
  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 3)))
  dws = [k for k in v["masks"] if k.endswith("_dw")]
  assert len(dws) == 4
  for k in dws:
    shape = v["masks"][k]["kernel"].shape
    assert shape[:3] == (3, 3, 1)
    assert v["params"][k]["kernel"].shape == shape
  assert "block1_expand" not in v["params"]  # t == 1: no expansion conv
  assert "block2_expand" in v["masks"]


@pytest.mark.parametrize("name", NAMES)
def test_masks_mirror_binary_kernels(name):
  model = _tiny_model(name, binary_first=False, binary_last=False)
  shape = TINY[name][1]
  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
  binary = _binary_layer_paths(model, shape)
  assert binary, "model has no binary layer"
  mask_paths = {tuple(k.key for k in p[:-1]) for p, _ in jax.tree_util.tree_leaves_with_path(
      v["masks"])}
  assert mask_paths == set(binary)
  for path in binary:
    assert set(_get(v["masks"], path)) == {"kernel"}
    m, k = _get(v["masks"], path)["kernel"], _get(v["params"], path)["kernel"]
    assert m.shape == k.shape and m.dtype == jnp.float32
  assert FIRST[name] in v["params"] and FIRST[name] not in v["masks"]
  assert LAST in v["params"] and LAST not in v["masks"]


@pytest.mark.parametrize("name", NAMES)
def test_binary_first_last_get_masks(name):
  model = _tiny_model(name, binary_first=True, binary_last=True)
  shape = TINY[name][1]
  v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
  for layer in (FIRST[name], LAST):
    assert v["masks"][layer]["kernel"].shape == v["params"][layer]["kernel"].shape
  assert (FIRST[name],) in _binary_layer_paths(model, shape)


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"mlp"}))
def test_cnn_defaults_full_precision_first_last(name):
  fields = models.MODELS[name].__dataclass_fields__
  assert fields["binary_first"].default is False and fields["binary_last"].default is False
  assert fields["binary_activations"].default is False and fields["scale"].default is False


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", NAMES)
def test_init_and_output_shape(name):
  _, v, x, apply, _ = _setup(name)
  assert set(v) == {"params", "batch_stats", "masks"}
  chex.assert_trees_all_equal(v["masks"], jax.tree.map(jnp.ones_like, v["masks"]))
  out = apply(v, x, train=False)
  chex.assert_shape(out, (BATCH, NUM_CLASSES))
  chex.assert_tree_all_finite(out)
  out, upd = apply(v, x, train=True, mutable=("batch_stats",))
  chex.assert_shape(out, (BATCH, NUM_CLASSES))
  chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", NAMES)
def test_masked_connections_have_no_effect(name, mode):
  _, v, x, apply, paths = _setup(name, mode)
  key = jax.random.PRNGKey(2)
  for i, path in enumerate((paths[0], paths[len(paths) // 2], paths[-1])):
    k_mask, k_flip = jax.random.split(jax.random.fold_in(key, i))
    kernel = _get(v["params"], path)["kernel"]
    mask = jax.random.bernoulli(k_mask, 0.5, kernel.shape).astype(jnp.float32)
    vm = {**v, "masks": _set(v["masks"], path + ("kernel",), mask)}
    ref = apply(vm, x, train=False)
    # Masked positions: flip every sign and change magnitudes -> outputs bit-identical.
    pert = jnp.where(mask == 0, -kernel - 0.3 * jnp.sign(kernel) - 0.05, kernel)
    assert bool(jnp.any((mask == 0) & (jnp.sign(pert) != jnp.sign(kernel))))
    vp = {**vm, "params": _set(v["params"], path + ("kernel",), pert)}
    np.testing.assert_array_equal(np.asarray(apply(vp, x, train=False)), np.asarray(ref))
    # Kept positions: flipping the signs of some kept weights changes the output.
    flip = jax.random.bernoulli(k_flip, 0.5, kernel.shape) & (mask == 1)
    vk = {**vm, "params": _set(v["params"], path + ("kernel",), jnp.where(flip, -kernel, kernel))}
    assert float(jnp.max(jnp.abs(apply(vk, x, train=False) - ref))) > 1e-6, path


@pytest.mark.parametrize("name", NAMES)
def test_zero_channel_mask_zeroes_preactivation(name):
  _, v, x, apply, paths = _setup(name)
  path = paths[1] if len(paths) > 1 else paths[0]   # a hidden binary layer (no bias)
  kernel = _get(v["params"], path)["kernel"]
  channel = 1
  mask = jnp.ones_like(kernel).at[..., channel].set(0.0)
  vm = {**v, "masks": _set(v["masks"], path + ("kernel",), mask)}
  _, state = apply(vm, x, train=False, capture_intermediates=True, mutable=("intermediates",))
  pre_bn = _get(state["intermediates"], path)["__call__"][0]
  assert pre_bn.shape[-1] == kernel.shape[-1]
  np.testing.assert_array_equal(np.asarray(pre_bn[..., channel]), 0.0)
  assert float(jnp.max(jnp.abs(jnp.delete(pre_bn, channel, axis=-1)))) > 0.0


@pytest.mark.parametrize("name", NAMES)
def test_train_uses_batch_stats_eval_uses_running_averages(name):
  _, v, x, apply, _ = _setup(name)
  # Train mode returns updated batch statistics with the same structure.
  _, upd = apply(v, x, train=True, mutable=("batch_stats",))
  chex.assert_trees_all_equal_shapes(upd["batch_stats"], v["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), upd["batch_stats"], v["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval: per-example outputs independent of the rest of the batch; train: not.
  ev = apply(v, x, train=False)
  chex.assert_trees_all_close(apply(v, x[:2], train=False), ev[:2], atol=1e-5, rtol=1e-5)
  tr, _ = apply(v, x, train=True, mutable=("batch_stats",))
  tr2, _ = apply(v, x[:2], train=True, mutable=("batch_stats",))
  assert float(jnp.max(jnp.abs(tr2 - tr[:2]))) > 1e-4
  # Changing the running averages changes eval outputs but not train outputs.
  shifted = {**v, "batch_stats": jax.tree.map(lambda s: s + 0.5, v["batch_stats"])}
  assert float(jnp.max(jnp.abs(apply(shifted, x, train=False) - ev))) > 1e-4
  tr_s, _ = apply(shifted, x, train=True, mutable=("batch_stats",))
  chex.assert_trees_all_close(tr_s, tr, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bn_momentum_zero_reestimates_stats(name):
  model, v, x, _, _ = _setup(name)
  model0 = model.clone(bn_momentum=0.0)
  apply0 = jax.jit(model0.apply, static_argnames=("train", "mutable", "capture_intermediates"))
  tr, state = apply0(v, x, train=True, mutable=("batch_stats", "intermediates"),
                     capture_intermediates=True)
  new_stats = state["batch_stats"]
  # Running stats of bn1 == statistics of the first layer's output on this batch.
  first = state["intermediates"][FIRST[name]]["__call__"][0]
  axes = tuple(range(first.ndim - 1))
  chex.assert_trees_all_close(new_stats["bn1"]["mean"], jnp.mean(first, axes), atol=1e-5,
                              rtol=1e-5)
  chex.assert_trees_all_close(new_stats["bn1"]["var"], jnp.var(first, axes), atol=1e-5, rtol=1e-4)
  # Hence an eval pass with the re-estimated stats reproduces the train pass.
  ev = apply0({**v, "batch_stats": new_stats}, x, train=False)
  chex.assert_trees_all_close(ev, tr, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", NAMES)
def test_gradients_ste_and_masked(name, mode):
  _, v, x, apply, paths = _setup(name, mode)
  vm = _random_half_masks(v, jax.random.PRNGKey(3))
  labels = jnp.arange(BATCH) % NUM_CLASSES

  @jax.jit
  def grad_fn(params):
    def loss(p):
      logits, _ = apply({**vm, "params": p}, x, train=True, mutable=("batch_stats",))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.grad(loss)(params)

  grads = grad_fn(vm["params"])
  chex.assert_tree_all_finite(grads)
  for path in paths:
    g = _get(grads, path)["kernel"]
    mask = _get(vm["masks"], path)["kernel"]
    np.testing.assert_array_equal(np.asarray(g * (1 - mask)), 0.0)    # masked: exactly zero
    assert float(jnp.max(jnp.abs(g * mask))) > 0.0, path               # kept: STE gradient
  for layer in (FIRST[name], LAST):
    if layer not in vm["masks"]:
      assert float(jnp.max(jnp.abs(grads[layer]["kernel"]))) > 0.0


def test_sharded_batch_stats_are_global():
  """jit over a batch sharded on 8 devices == unsharded computation (no axis_name needed)."""
  _, v, _, apply, _ = _setup("resnet18")
  x = _images("resnet18", batch=16, seed=7)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  vs = jax.device_put(v, NamedSharding(mesh, P()))
  out, upd = apply(v, x, train=True, mutable=("batch_stats",))
  out_s, upd_s = apply(vs, xs, train=True, mutable=("batch_stats",))
  assert len(out_s.sharding.device_set) == 8
  chex.assert_trees_all_close(out_s, out, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(upd_s, upd, atol=1e-5, rtol=1e-5)
