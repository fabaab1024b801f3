"""Bad input, generated from the configuration schema (issue 26): every key x {nan, inf, wrong
type, out of range, malformed}, through each way a user sets it (``--set``, ``--config.KEY``,
the short flag), must stop with exit status 2 and one paragraph naming the key — no traceback,
no training, no file written. The refusals come before JAX starts (a subprocess shows it), so
the ~1,800 cases run in this process through train.py's own entry (``cli.call``: the same
parser and error boundary as the command line) in a few seconds; a handful run as real
processes.

Also here: the structural checks (override paths, config files, names, nonsense combinations)
and the error boundary itself (an internal error exits 1 naming its traceback file).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import train
from arsp_jax import cli, configs, models
from arsp_jax.configs import base, validation
from arsp_jax.export import summary
from arsp_jax.train import loop
from tests.util import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------
# The generator: bad values per key, from the schema (validation.RULES and the option rules).
# ----------------------------------------------------------------------------

NON_FINITE = ("nan", "inf", "-inf")
MALFORMED = ("(1,2", "((1,2),3)", "[1,", "(,)", "(1,,2)")
WRONG_TYPE = {
  bool: ("abc", "2", "1.5", "(1,)"),
  int: ("abc", "1.5", "true", "(1,2)"),
  float: ("abc", "true", "(1,2)"),
  str: ("1", "2.5", "true", "(1,2)"),
  tuple: ("abc", "1", "true"),
}
OUT_OF_RANGE = {
  int: ("-1", "0", str(-(2**63)), str(2**63), str(10**12)),
  float: ("-1", "0", "-1e30", "1e30", "1", "2"),
  tuple: ("(0,)", "(-1,32)", "()", f"({2**40},)", "(32,0)"),
}


def _kind(default) -> type:
  return tuple if isinstance(default, (tuple, list)) else type(default)


def _bad_values(rule, default):
  """``{category: [value text]}`` of the values ``rule`` refuses (as ``--set`` parses them)."""
  kind = _kind(default)
  out = {
    "nan/inf": NON_FINITE,
    "wrong type": WRONG_TYPE.get(kind, ()),
    "out of range": OUT_OF_RANGE.get(kind, ()),
    "malformed": MALFORMED,
  }
  keep = {}
  for category, values in out.items():
    bad = []
    for text in values:
      try:
        value = configs.parse_value(text)
      except configs.ConfigError:
        bad.append(text)  # refused by the parser itself
        continue
      type_ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
      type_ok = type_ok and not (isinstance(value, bool) and kind is not bool)
      if not type_ok or not rule.test(value):
        bad.append(text)
    keep[category] = bad
  return keep


def schema_keys():
  """``(key, rule, default, base flags)`` for every configuration key and every option of the
  datasets and models the schema knows."""
  flat = configs.flatten(base.get_config())
  out = [
    (k, r, flat[k], ()) for k, r in validation.RULES.items() if k not in configs.OPTION_SECTIONS
  ]
  synthetic = configs.get_config("synthetic").dataset_kwargs
  for k, r in validation.DATASET_OPTION_RULES.items():
    dataset = "synthetic" if k in synthetic else "imagenet2012"
    default = synthetic.get(k, 224 if k == "image_size" else 1 if k == "num_workers" else "x")
    out.append((f"dataset_kwargs.{k}", r, default, (f"--dataset={dataset}",)))
  for name in ("mlp", "vgg_small"):
    for k, f in models.MODELS[name].__dataclass_fields__.items():
      if k in ("parent", "name", "num_classes") or isinstance(f.default, type(None)):
        continue
      rule = validation.NAMED_MODEL_OPTION_RULES.get(k) or (
        validation._tuple_rule(f.default)
        if isinstance(f.default, (tuple, list))
        else validation.MODEL_OPTION_RULES[type(f.default)]
      )
      out.append((f"model_kwargs.{k}", rule, f.default, (f"--model={name}",)))
  return out


def fuzz_cases():
  """``(id, argv, key)``: each bad value through ``--set``; numbers and flags also through
  ``--config.KEY`` and the short flag (typed flags: only values absl cannot parse or that the
  rule refuses)."""
  cases = []
  for key, rule, default, extra in schema_keys():
    kind = _kind(default)
    for category, values in _bad_values(rule, default).items():
      for text in values:
        cases.append((f"{key}:{category}:set:{text}", [*extra, "--set", f"{key}={text}"], key))
        # config_flags and absl parse by the field's type: a string field takes any text.
        # (Malformed tuples only through --set: the typed flags refuse them as any bad text.)
        typed = kind in (int, float, bool) and category != "malformed"
        if typed and not key.startswith(configs.OPTION_SECTIONS):
          cases.append((f"{key}:{category}:config:{text}", [f"--config.{key}={text}"], key))
          if key in configs.FLAG_OF and kind is not bool:
            cases.append((f"{key}:{category}:flag:{text}", [f"{configs.FLAG_OF[key]}={text}"], key))
  for section in ("", "arsp.", "finetune.", "model_kwargs.", "dataset_kwargs.", "epochs."):
    key = f"{section}no_such_key"
    cases.append((f"{key}:unknown", ["--set", f"{key}=1"], key.split(".")[0]))
  return cases


def _stub_training(monkeypatch) -> list:
  """``loop.run`` records its config instead of training, and the results' printout takes the
  empty results: a run that gets past the checks exits 0 (no internal error, no traceback
  file left in the temp directory)."""
  seen = []
  monkeypatch.setattr(loop, "run", lambda cfg, wd, **kw: seen.append(cfg) or {})
  monkeypatch.setattr(summary, "format_results", lambda results: "(training stubbed)")
  return seen


@pytest.fixture
def no_training(monkeypatch):
  """The test fails if a refused run reaches ``loop.run`` (it records the run's config)."""
  return _stub_training(monkeypatch)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # config_flags' load_module, per case
def test_schema_fuzz_every_key_refused_cleanly(tmp_path, capsys, no_training):
  cases = fuzz_cases()
  categories = {c[0].split(":")[1] for c in cases}
  assert {"nan/inf", "wrong type", "out of range", "malformed", "unknown"} <= categories
  assert len({c[2] for c in cases}) >= 70 and len(cases) >= 1000, len(cases)
  wd = tmp_path / "wd"
  failures = []
  for case_id, argv, key in cases:
    code = cli.call(train.main, ["train.py", f"--workdir={wd}", "--progress=false", *argv])
    err = capsys.readouterr().err
    leaf = key.split(".")[-1]
    problems = [
      code != 2 and f"exit {code}",
      not err.startswith("error: ") and "no 'error:'",
      len(err.strip().splitlines()) != 1 and "not one line",
      "Traceback" in err and "traceback",
      not any(n in err for n in (leaf, configs.label(key).lstrip("-"))) and "key not named",
      no_training and "training started",
      os.path.exists(wd) and "workdir created",
    ]
    problems = [p for p in problems if p]
    if problems:
      failures.append(f"{case_id}: {', '.join(problems)}: {err.strip()[:200]}")
    no_training.clear()
  assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:40])
  assert os.listdir(tmp_path) == []


_BEFORE_JAX = """
import sys, train
from arsp_jax import cli
def run(cases):
  return [cli.call(train.main, ["train.py", "--workdir=" + sys.argv[1], *a.split()])
          for a in cases]
sep = sys.argv.index("--")
codes = run(sys.argv[2:sep])
imported = False  # (the rules' choice lists come from the registries, which import JAX)
codes += run(sys.argv[sep + 1:])  # model options: flax's classes are read, no backend starts
from jax._src import xla_bridge
print(codes, imported, bool(xla_bridge._backends))
"""


def test_refusals_come_before_jax_starts(tmp_path):
  """In a fresh process the schema's refusals start no JAX backend (JAX is imported: the
  rules' choice lists come from the registries of scores and methods)."""
  cases = fuzz_cases()
  plain = [" ".join(a) for _, a, k in cases[::40] if not k.startswith("model_kwargs")]
  model = [" ".join(a) for _, a, k in cases if k.startswith("model_kwargs")][::40]
  p = subprocess.run(
    [sys.executable, "-c", _BEFORE_JAX, str(tmp_path / "wd"), *plain, "--", *model],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 0, p.stderr[-2000:]
  n = len(plain) + len(model)
  assert p.stdout.strip() == f"{[2] * n} False False", (p.stdout, p.stderr[-2000:])
  assert "Traceback" not in p.stderr and not os.path.exists(tmp_path / "wd")


# ----------------------------------------------------------------------------
# Real processes: parsing, config files and the boundary as a user meets them.
# ----------------------------------------------------------------------------


def _config_files(d):
  files = {
    "raises": "def get_config():\n  raise RuntimeError('boom')\n",
    "no_get_config": "x = 1\n",
    "syntax": "def get_config(:\n",
    "bad_import": "import no_such_module_xyz\n",
    "wrong_field_type": (
      "from arsp_jax.configs import base\n\ndef get_config():\n  c = base.get_config()\n"
      "  c.arsp = 3\n  return c\n"
    ),
    "wrong_value": (
      "from arsp_jax.configs import base\n\ndef get_config():\n  c = base.get_config()\n"
      "  c.epochs = -3\n  return c\n"
    ),
    "returns_int": "def get_config():\n  return 5\n",
  }
  for name, text in files.items():
    (d / f"{name}.py").write_text(text)
  return {name: str(d / f"{name}.py") for name in files}


REAL_CASES = [
  ("unbalanced tuple", ["--set", "model_kwargs.hidden=(32,32"], "malformed tuple"),
  ("trailing flag without value", ["--dataset"], "--dataset"),
  ("missing flagfile", ["--flagfile=/nonexistent/flags"], "flagfile"),
  ("config file that raises", ["--config={raises}"], "RuntimeError: boom"),
  ("multi-process flag without --distributed", ["--num_processes=2"], "--distributed"),
]


def test_bad_input_in_real_processes(tmp_path):
  files = _config_files(tmp_path)
  wd = tmp_path / "wd"
  for name, argv, needle in REAL_CASES:
    argv = [a.format(**files) for a in argv]
    p = subprocess.run(
      [sys.executable, "train.py", f"--workdir={wd}", *argv],
      cwd=ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert p.returncode == 2, (name, p.stderr[-2000:])
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr, (name, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, (name, p.stderr)
    assert not wd.exists()


@pytest.mark.parametrize(
  "name, needles",
  [
    ("raises", ["raises.py", "line 2", "RuntimeError: boom"]),
    ("no_get_config", ["no get_config()"]),
    ("syntax", ["syntax.py", "line 1", "SyntaxError"]),
    ("bad_import", ["ModuleNotFoundError", "no_such_module_xyz"]),
    ("wrong_field_type", ["line 5", "TypeError", "'arsp'"]),
    ("wrong_value", ["--epochs must be a non-negative integer", "-3"]),
    ("returns_int", ["returned int"]),
  ],
)
def test_config_file_problems(tmp_path, capsys, train_main, no_training, name, needles):
  files = _config_files(tmp_path)
  wd = tmp_path / "wd"
  assert train_main(f"--workdir={wd}", f"--config={files[name]}") == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1, err
  for n in needles:
    assert n in err, (n, err)
  assert not no_training and not wd.exists()


# ----------------------------------------------------------------------------
# Structure, names and combinations.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "argv, needles",
  [
    (["--set", "model_kwargs.hidden.x=1"], ["one level deep"]),
    (["--set", "epochs.x=1"], ["epochs is a value"]),
    (["--config.model_kwargs.hidden.x=1"], ["hidden"]),
    (["--set", "model_kwargs.hidden=((32,32),32)"], ["malformed tuple"]),
    (["--set", "dataset_kwargs.image_shape=(28,28)"], ["three integers"]),
    (["--set", f"dataset_kwargs.num_classes={10**12}"], ["dataset_kwargs.num_classes"]),
    (["--set", "dataset_kwargs.num_train=50000000"], ["GiB of memory"]),
    (["--set", "model_kwargs.hidden=(70000,)"], ["model_kwargs.hidden"]),
    (["--batch_size=1048576", "--set", "dataset_kwargs.image_shape=(64,64,3)"], ["GiB at once"]),
    (["--set", "steps_per_window=4096", "--batch_size=65536"], ["--steps_per_window"]),
    (["--method=dense", "--epochs=0"], ["--epochs=0", "trains nothing"]),
    (["--epochs=0"], ["--epochs=0", "--init_from"]),
    (["--num_processes=2"], ["--num_processes", "--distributed"]),
    (["--process_id=0"], ["--process_id", "--distributed"]),
    (["--workdir="], ["--workdir= is empty"]),
    (["positional"], ["Unexpected arguments"]),
  ],
)
def test_structure_and_combinations_refused(
  tmp_path, capsys, train_main, no_training, argv, needles
):
  wd = tmp_path / "wd"
  wd_flag = [] if any(a.startswith("--workdir") for a in argv) else [f"--workdir={wd}"]
  code = train_main(*wd_flag, "--dataset=synthetic", "--progress=false", *argv)
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1, err
  for n in needles:
    assert n in err, (n, err)
  assert not no_training and not wd.exists() and os.listdir(tmp_path) == []


def test_names_in_another_spelling_are_the_canonical_ones(
  tmp_path, capsys, train_main, monkeypatch
):
  """``Synthetic``/``fashion-mnist`` pick the same preset and loader as the canonical names;
  a config that bypasses the entry point is refused with the known names."""
  seen = _stub_training(monkeypatch)
  for typed, canonical in [("Synthetic", "synthetic"), ("Fashion-MNIST", "fashion_mnist")]:
    assert train_main(f"--workdir={tmp_path / 'wd'}", f"--dataset={typed}") == 0
    want = configs.get_config(canonical)
    assert seen[-1].dataset == canonical
    assert seen[-1].dataset_kwargs.to_dict() == want.dataset_kwargs.to_dict()
  assert train_main(f"--workdir={tmp_path / 'wd'}", "--model=MLP", "--method=ARSP") == 0
  assert (seen[-1].model, seen[-1].method) == ("mlp", "arsp")
  capsys.readouterr()
  c = configs.get_config("synthetic")
  c.dataset = "Synthetic"
  with pytest.raises(configs.ConfigError, match="use 'synthetic'.*Known datasets"):
    configs.validate(c)


def test_flags_the_method_ignores_are_named_in_one_warning(
  tmp_path, capsys, train_main, monkeypatch
):
  _stub_training(monkeypatch)
  code = train_main(
    f"--workdir={tmp_path / 'wd'}",
    "--dataset=synthetic",
    "--method=dense",
    "--target_sparsity=0.5",
    "--set",
    "finetune.epochs=3",
  )
  err = capsys.readouterr().err
  warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
  assert code == 0 and len(warnings) == 1, err
  assert "--target_sparsity" in warnings[0] and "--finetune_epochs" in warnings[0]
  cfg = configs.get_config("synthetic")
  cfg.method = "magnitude"
  assert configs.ignored_keys(cfg, ["arsp.score", "arsp.population", "arsp.temperature"]) == [
    "arsp.population",
    "arsp.score",
    "arsp.temperature",
  ]
  cfg.method = "arsp"
  assert configs.ignored_keys(cfg, ["arsp.score", "arsp.population", "arsp.temperature"]) == []


# ----------------------------------------------------------------------------
# The boundary: internal errors and distributed start-up.
# ----------------------------------------------------------------------------


def test_an_internal_error_exits_1_naming_its_traceback_file(tmp_path, capsys, train_main):
  def bug(cfg, wd, **kw):
    os.makedirs(wd)
    raise RuntimeError("simulated bug\nsecond line")

  orig = loop.run
  try:
    loop.run = bug
    wd = tmp_path / "wd"
    assert train_main(f"--workdir={wd}", "--dataset=synthetic") == 1
  finally:
    loop.run = orig
  err = capsys.readouterr().err
  assert err.startswith("internal error") and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1 and "RuntimeError: simulated bug" in err, err
  path = err.split("The full traceback is in ")[1].split(";")[0]
  assert os.path.dirname(path) == str(wd), path  # in the workdir when there is one
  text = open(path).read()
  assert "Traceback (most recent call last)" in text and "in bug" in text


def test_an_internal_error_without_workdir_goes_to_a_temp_file(capsys):
  with pytest.raises(SystemExit) as e:
    with cli.user_errors(workdir=None):
      raise KeyError("bug")
  assert e.value.code == 1
  err = capsys.readouterr().err
  path = err.split("The full traceback is in ")[1].split(";")[0]
  assert os.path.isfile(path) and "KeyError" in open(path).read()
  os.remove(path)


def test_distributed_initialisation_errors_are_user_errors(tmp_path, capsys, monkeypatch):
  import jax
  from absl import flags

  def fail(**kw):
    raise ValueError("coordinator_address should be defined.")

  monkeypatch.setattr(jax.distributed, "initialize", fail)
  flags.FLAGS.unparse_flags()
  cli.parse_flags(["train.py", "--distributed", "--dataset=synthetic"])
  with pytest.raises(SystemExit) as e:
    with cli.user_errors():
      cli.initialize_distributed()
  flags.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: --distributed"), err
  assert "coordinator_address should be defined" in err and "--coordinator_address" in err


def test_study_entry_point_has_the_same_boundary(tmp_path, capsys, monkeypatch):
  from arsp_jax.study import __main__ as study
  from arsp_jax.study import grid

  wd = tmp_path / "study"
  assert study.main(["--workdir", str(wd), "--sparsities=2"]) == 2
  assert capsys.readouterr().err.startswith("error: ") and not wd.exists()
  assert study.main(["--workdir", "", "--sparsities=0.5"]) == 2
  assert "--workdir= is empty" in capsys.readouterr().err

  def bug(*a, **kw):
    raise ZeroDivisionError("simulated")

  monkeypatch.setattr(grid, "run_grid", bug)
  args = ["--workdir", str(wd), "--dataset=synthetic", "--methods=arsp", "--sparsities=0.5"]
  assert study.main([*args, "--seeds=1", "--control=false"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("internal error") and "Traceback" not in err, err
  assert any(n.startswith("traceback-") for n in os.listdir(wd))


def test_numbers_parsed_as_the_user_wrote_them():
  assert configs.parse_value("(32,)") == (32,) and configs.parse_value("()") == ()
  assert configs.parse_value("[1, 2]") == (1, 2)
  for bad in MALFORMED:
    with pytest.raises(configs.ConfigError, match="malformed tuple"):
      configs.parse_value(bad)
  assert math.isnan(configs.parse_value("nan"))
  assert json.loads(json.dumps(configs.parse_value("abc"))) == "abc"
