# One entry point for people and CI. `make demo` and `make test` each set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint typecheck unit bench bench-setup setup setup-dev clean

$(VENV)/.ok-local: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[local]"
	touch $@

$(VENV)/.ok-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[dev]"
	touch $(VENV)/.ok-local $@

setup: $(VENV)/.ok-local
setup-dev: $(VENV)/.ok-dev

## The embedded default: sample events through the real handler against the bundled local agent.
demo: $(VENV)/.ok-local
	$(PY) -m fair_runners.demo

## Lint, type-check and the whole test suite.
test: $(VENV)/.ok-dev lint typecheck unit

lint: $(VENV)/.ok-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check fair_runners handler

typecheck: $(VENV)/.ok-dev
	$(VENV)/bin/mypy

unit: $(VENV)/.ok-dev
	$(PY) -m pytest

## Benchmark (not a test): speed vs the sequential Fair-Forge baseline, CPU and RSS, cold start.
## Writes .bench/results.json; the baseline gets its own virtualenv in .bench/ (bench-setup, or on first run).
bench: $(VENV)/.ok-local
	$(PY) bench/bench.py

bench-setup: $(VENV)/.ok-local
	$(PY) bench/bench.py --setup-only

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .bench
