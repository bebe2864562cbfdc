# The two set-up commands users need: `make demo` and `make test`. Each builds .venv on first use and reinstalls
# only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR ?= .mailroute
MR := $(BIN)/mailroute --home $(HOME_DIR)
DEMO_PORT ?= 8000

# Nothing this project launches may try the network.
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

# The whole loop on embedded defaults: corpus, both models, the Serve app on a fast clock, simulated customers and
# agents, drift, the scheduled monitoring job, retraining, a canary promoted by the rollout job, a summary; the server
# and the dashboard stay up until Ctrl-C (DEMO_WAIT=0: exit at once). Reruns start over in $(HOME_DIR).
DEMO_WAIT ?= 1
demo: $(VENV)/.installed
	$(MR) demo --reset --port $(DEMO_PORT) $(if $(filter 0,$(DEMO_WAIT)),--no-wait,--wait)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_linear.py

clean:
	rm -rf $(HOME_DIR) .mypy_cache .ruff_cache .pytest_cache
