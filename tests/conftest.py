"""Test configuration: 8 fake CPU devices, set before JAX initialises a backend."""

import os

# Tests are compile-bound on 2 cores and run tiny programs: LLVM's expensive optimisations cost
# more than they save (measured: -19% wall time on test_methods + test_step from a cold cache).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + TEST_XLA_FLAGS
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

assert jax.device_count() == 8, "conftest must run before any JAX backend starts"

# Compiling the ARSP step dominates the suite's time on 2 cores; identical programs built by
# different tests (same tiny config) are compiled once per session through the persistent cache.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def train_main():
  """``train.py``'s main run in this process as ``train.py`` runs it (flags parsed from argv,
  inside the same error boundary: ``cli.call``), returning the exit code."""
  from absl import flags

  import train
  from arsp_jax import cli

  yield lambda *argv: cli.call(train.main, ["train.py", *argv])
  flags.FLAGS.unparse_flags()


# The modules holding the longest tests start first (measured with --durations: 10-100 s each on
# 2 cores), so that pytest-xdist does not leave one of them running alone at the end. Whole
# modules move (their order inside kept), so module-scoped fixtures are still built once.
LONG_FIRST = (
  "test_compress.py",  # with test_engine_fused.py: one worker, the numba kernels (~200 s)
  "test_engine_fused.py",
  "test_multiprocess.py",  # (make test-all) 2 x 2 processes and an 8-device reference (~80 s)
  "test_agent.py",  # the 8-layer optimum against random search (~45 s)
  "test_compare.py",  # the study grid fixture (~40 s)
  "test_reliability.py",  # the finished-run fixture, faults in real processes (~35 s)
  "test_methods.py",  # the search schedule's round (~15 s)
  "test_cli.py",
  "test_step.py",
)


# The packed engine's numba kernels compile on first use in each process (~25-35 s of CPU from
# an empty cache); the modules that run them go to one pytest-xdist worker (`make test` runs
# `--dist loadgroup`), which compiles them once and writes the cache, instead of both workers
# compiling the same kernels at the same time.
NUMBA_MODULES = ("test_compress.py", "test_engine_fused.py")

# Module-scoped fixtures that train runs (20-90 s each from an empty compile cache): pytest-xdist
# builds a module fixture once per worker that runs one of its tests (measured: the study grid
# built twice, 92 + 84 s), so the tests that use one go to the same worker.
SHARED_FIXTURES = ("study", "done_run", "arsp_run")


# tryfirst: pytest-xdist turns the xdist_group markers into worker assignments in its own
# collection hook, so they must be added before it runs.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.split("::")[0].split("/")[-1] in NUMBA_MODULES:
      item.add_marker(pytest.mark.xdist_group("numba_engine"))
      continue
    for name in SHARED_FIXTURES:
      if name in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.xdist_group(f"fixture_{name}"))
        break
  rank = {name: i for i, name in enumerate(LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].split("/")[-1], len(rank)))
