# promptlab: `make demo` and `make test` set up the virtual environment on first use (about 2 minutes).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.promptlab-installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core, at most 4 (each holds its own torch and toy world); 0: none.
TEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(TEST_WORKERS) --maxprocesses 4
# Threads per process: the demo and tests start several processes on small machines.
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline

.PHONY: help setup demo test test-slow test-all bench gpu-check lint study study-all clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create/update the virtual environment ($(VENV), or VENV=path)

demo: $(STAMP)  ## the main job on the offline default: zero-shot, CoOp, CoCoOp, linear probe, Tip-Adapter on the toy world, 2 seeds -> table + figure
	$(PY) -m promptlab.train -m experiment=demo

test: $(STAMP)  ## the fast test suite (what CI runs first)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-slow: $(STAMP)  ## the slow end-to-end tests (sweeps, DDP, the study's direction)
	$(PY) -m pytest -q -m slow $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-all: test test-slow  ## both suites

bench: $(STAMP)  ## throughput of CoOp/CoCoOp training and evaluation vs naive loops -> outputs/bench/latest.json
	$(PY) -m promptlab.bench $(BENCH_ARGS)

gpu-check: $(STAMP)  ## on a GPU machine: every method on ViT-B/16 (random weights, bf16), DDP, bench rows -> docs/gpu_check.{json,md}
	$(PY) -m promptlab.gpu_check

study: $(STAMP)  ## the spurious-background study: 4 methods x 3 strengths x seeds -> table + figure
	$(PY) -m promptlab.train -m experiment=spurious_study

study-all: $(STAMP)  ## the same study over all 10 prompt learners (ProGrad, VPT, IVLP, MaPLe, PromptSRC...), 5 seeds (about an hour on 2 cores)
	$(PY) -m promptlab.train -m experiment=spurious_study_all

# What mypy checks: the public API, the Lightning engine and every method (each of them passes).
MYPY_PATHS := src/promptlab/api.py src/promptlab/__init__.py src/promptlab/engine src/promptlab/methods

lint: $(STAMP)  ## ruff over src and tests, mypy over the public API, the engine and the methods
	$(VENV)/bin/ruff check src tests
	$(PY) -m mypy $(MYPY_PATHS) --follow-imports=silent --ignore-missing-imports

clean:  ## remove outputs (keeps the venv and generated data)
	rm -rf outputs/runs outputs/sweeps outputs/tables outputs/cache
