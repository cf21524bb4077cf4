# Two entry points: `make run` (the main job) and `make test` (lint + tests). Both create or reuse .venv.
# TORCH_SPEC chooses the torch build, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.metarl-installed
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test test-slow lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py constraints.txt
	$(PIP) install --upgrade "pip>=23.2"
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) benchmarks/run_mujoco.py $(RUN_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# `-m "not slow"`: slow multi-actor / learning runs are opt-in (make test-slow); a tiny version of each always runs.
# Tests that start or stop a Ray cluster (`-m cluster`) run in their own pytest process after the rest.
test: lint
	PATH="$(abspath $(VENV))/bin:$$PATH" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)
	PATH="$(abspath $(VENV))/bin:$$PATH" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) tests/run_cluster_tests.py $(PYTEST_ARGS)

test-slow: install
	PATH="$(abspath $(VENV))/bin:$$PATH" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(PY) -m pytest -m "slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
