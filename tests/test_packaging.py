"""The project installs as a normal (non-editable) package with every subpackage in it."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ["models", "pruning", "train", "data", "export", "study", "configs"]


def test_non_editable_install_has_every_subpackage(tmp_path):
  # Build from a copy, so the build leaves no build/ or egg-info in the source tree.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src)
  shutil.copytree(
    os.path.join(ROOT, "arsp_jax"),
    src / "arsp_jax",
    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
  )
  target = tmp_path / "site"
  pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
  p = subprocess.run(
    [*pip, "--no-index", "--target", str(target), str(src)], capture_output=True, text=True
  )
  assert p.returncode == 0, p.stderr[-3000:]
  shutil.rmtree(src)  # nothing may come from the copy

  # Import from another directory with only the installed copy ahead of site-packages (where
  # the development venv's editable install points at the source tree).
  mods = ["arsp_jax"] + [f"arsp_jax.{m}" for m in SUBPACKAGES] + ["arsp_jax.train.loop"]
  code = "import importlib\n" + "".join(
    f"print(importlib.import_module({m!r}).__file__)\n" for m in mods
  )
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(target), JAX_PLATFORMS="cpu")
  p = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert p.returncode == 0, p.stderr[-3000:]
  files = p.stdout.split()
  assert len(files) == len(mods)
  for m, f in zip(mods, files):
    assert f.startswith(str(target) + os.sep), (m, f)


def test_engine_and_bench_extras_are_declared_and_named_when_numba_is_missing():
  import tomllib

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  assert any(d.startswith("numba") for d in extras["engine"])
  assert any(d.startswith("onnxruntime") for d in extras["bench"])
  # numba missing: engine.load(..., "compiled") and importing the compiled engine say which
  # extra to install, in one line.
  code = (
    "import sys\n"
    "sys.modules['numba'] = None\n"
    "from arsp_jax.export import engine\n"
    "try:\n"
    "  engine.load('no-such-file', 'compiled')\n"
    "except Exception as e:\n"
    "  print(type(e).__name__, e)\n"
    "try:\n"
    "  import arsp_jax.export.compiled\n"
    "except ImportError as e:\n"
    "  print(type(e).__name__, e)\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  lines = p.stdout.strip().splitlines()
  assert p.returncode == 0 and len(lines) == 2, p.stderr[-2000:]
  assert all("arsp_jax[engine]" in line for line in lines), lines
