"""One registry style (arsp_jax/registry.py) for models, scores, controllers, methods, datasets
and the engine's array ops;
the configuration's choice lists come from them."""

import pytest

from arsp_jax import configs, data, models, registry
from arsp_jax.configs import validation
from arsp_jax.errors import ConfigError
from arsp_jax.pruning import controllers, methods, reservoir, scores


def test_register_get_and_names():
  reg = registry.Registry("widget")
  reg.register("a", 1)

  @reg.register("b")
  def b():
    return 2

  assert reg.names() == ("a", "b") and reg.get("b") is b and dict(reg) == {"a": 1, "b": b}
  assert reg.get("zz", None) is None
  with pytest.raises(ValueError, match="Unknown widget 'zz'. Known widgets: a, b."):
    reg.get("zz")
  with pytest.raises(ValueError, match="registered twice"):
    reg.register("a", 3)


def test_every_registry_is_one_and_feeds_the_config_rules():
  from arsp_jax.export import graph

  regs = (models.MODELS, scores.SCORES, controllers.REGISTRY, methods.REGISTRY, data.LOADERS)
  for reg in regs + (graph.ELEMENTWISE, graph.UNARY):
    assert isinstance(reg, registry.Registry)
  assert configs.SCORES == scores.SCORES.names()
  assert configs.GRANULARITIES == reservoir.GRANULARITIES
  assert validation.METHODS == ("dense",) + methods.REGISTRY.names()
  assert data.LOCAL_DATASETS == data.LOADERS.names()
  with pytest.raises(ConfigError, match="Unknown model"):
    models.get_model("nope", 10)
  with pytest.raises(ValueError, match="Known controllers: .*ppo"):
    controllers.get("nope")
