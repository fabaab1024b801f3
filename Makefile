# Quickstart targets: `make demo` (set up + ARSP on Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data demo lint format test test-all clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

data:
	@scripts/ensure_data.sh

demo: setup data
	$(PY) train.py $(ARGS)

# Two pytest workers (pytest-xdist): the suite is compile-bound, one XLA compile per core;
# `--dist loadgroup` keeps the numba engine's tests on one worker (tests/conftest.py).
TEST_WORKERS ?= 2

# The formatter and linter (ruff, configured in pyproject.toml) run first: one style everywhere.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# `make test` (CI) leaves out the tests marked slow (`pytest -m slow --collect-only` lists them:
# end-to-end chains in real processes — the 2-process pre-emption and resume run (make test checks
# 1 against 8 devices in one process), the SIGKILL resume chain, the grain pre-emption chain, the
# CLI train+eval processes —, the generic-CPU numba compile, the 4-layer agent tests (the 8-layer
# known-optimum test runs), the lambda sweep, the legacy cond step and the second and later cases
# of parametrised rule and search checks) to stay under 6 minutes on 2 cores from empty caches;
# `make test-all` runs every test.
test: setup lint
	@scripts/ensure_data.sh --optional
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow" tests $(ARGS)

test-all: setup lint
	@scripts/ensure_data.sh --optional
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests $(ARGS)

clean:
	rm -rf $(VENV) runs
