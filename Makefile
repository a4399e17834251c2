# One entry point for people and CI. `make demo` and `make test` each set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

SAM_VENV ?= .tools/sam-venv
SAM := $(SAM_VENV)/bin/sam
LAMBDA_PLATFORM ?= manylinux2014_x86_64

.PHONY: demo test lint asl typecheck unit bench bench-setup setup setup-dev clean sam-cli build-RunnerFunction build-MergeFunction

$(VENV)/.ok-local: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[local,bedrock,anthropic]"
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
	$(VENV)/bin/fair-runners demo

## Lint, type-check and the whole test suite.
test: $(VENV)/.ok-dev lint typecheck unit

lint: $(VENV)/.ok-dev asl
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check fair_runners handler

## The state machine definition, checked by an Amazon States Language validator (node + npm).
asl:
	npx --yes asl-validator@4 --json-path statemachine/runs.asl.json

typecheck: $(VENV)/.ok-dev
	$(VENV)/bin/mypy

unit: $(VENV)/.ok-dev sam-cli
	$(PY) -m pytest

## AWS SAM CLI in its own virtualenv (its pins clash with the app's); cached in .tools/ (gitignored).
$(SAM_VENV)/.ok:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAM_VENV)/bin/python -m pip install -q "aws-sam-cli>=1.120"
	touch $@

sam-cli: $(SAM_VENV)/.ok

## `sam build` (BuildMethod: makefile) calls these with ARTIFACTS_DIR: the code plus Lambda-platform wheels. Each
## function gets only what it imports (requirements.txt, requirements-merge.txt); boto3 is the runtime's.
## FAIR_RUNNERS_EXTRAS=bedrock,anthropic sam build adds those providers to the runner (azure needs nothing more).
comma := ,
EXTRA_PACKAGES := $(patsubst bedrock,langchain-aws>=0.2.10,$(patsubst anthropic,langchain-anthropic>=0.3,$(filter-out azure,$(subst $(comma), ,$(FAIR_RUNNERS_EXTRAS)))))
build-RunnerFunction: REQUIREMENTS = requirements.txt
build-RunnerFunction: PACKAGES = $(foreach p,$(EXTRA_PACKAGES),"$(p)")
build-MergeFunction: REQUIREMENTS = requirements-merge.txt
build-RunnerFunction build-MergeFunction:
	@test -n "$(ARTIFACTS_DIR)" || (echo "ARTIFACTS_DIR is not set: run sam build" && exit 2)
	cp -R fair_runners handler "$(ARTIFACTS_DIR)/"
	find "$(ARTIFACTS_DIR)/fair_runners" "$(ARTIFACTS_DIR)/handler" -name __pycache__ -prune -exec rm -rf {} +
	rm -rf "$(ARTIFACTS_DIR)/fair_runners/testing" "$(ARTIFACTS_DIR)/fair_runners/cli"
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-compile -r $(REQUIREMENTS) $(PACKAGES) \
		--target "$(ARTIFACTS_DIR)" --platform $(LAMBDA_PLATFORM) --implementation cp \
		--python-version 3.11 --only-binary=:all: --upgrade

## Benchmark (not a test): speed vs the sequential Fair-Forge baseline, CPU and RSS, cold start.
## Writes .bench/results.json; the baseline gets its own virtualenv in .bench/ (bench-setup, or on first run).
bench: $(VENV)/.ok-local
	$(PY) bench/bench.py

bench-setup: $(VENV)/.ok-local
	$(PY) bench/bench.py --setup-only

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .tools .bench