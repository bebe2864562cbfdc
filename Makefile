# The two set-up commands users need: `make demo` and `make test`. Each builds .venv on first use and reinstalls
# only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR ?= .mailroute
DEMO_DATA := $(HOME_DIR)/data
DEMO_CONFIGS := $(HOME_DIR)/demo-configs
MR := $(BIN)/mailroute --home $(HOME_DIR)
DEMO_PORT ?= 8000
FETCH := $(BIN)/python -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())'

# Nothing this project launches may try the network.
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
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

demo: $(VENV)/.installed
	@mkdir -p $(DEMO_DATA)
	$(MR) data synth --n 20000 --seed 1 --out $(DEMO_DATA)/train.jsonl
	$(MR) data synth --n 5000 --seed 2 --out $(DEMO_DATA)/fresh.jsonl
	$(MR) data synth --n 5000 --seed 3 --drift 0.7 --out $(DEMO_DATA)/drifted.jsonl
	$(MR) data synth --long --n 1000 --seed 5 --out $(DEMO_DATA)/long.jsonl
	@set -e; out=$$($(MR) train linear --data $(DEMO_DATA)/train.jsonl --label-col queue); echo "$$out"; \
	  version=$$(echo "$$out" | tail -n 1); \
	  $(MR) models promote $$version; \
	  echo "== $$version on fresh mail from the same distribution"; \
	  $(MR) evaluate --model $$version --data $(DEMO_DATA)/fresh.jsonl --label-col queue; \
	  echo "== $$version on drifted mail (new products, new errors, another queue mix)"; \
	  $(MR) evaluate --model $$version --data $(DEMO_DATA)/drifted.jsonl --label-col queue; \
	  echo "== $$version on long multi-paragraph mail (backstory, quoted threads, forwards)"; \
	  $(MR) evaluate --model $$version --data $(DEMO_DATA)/long.jsonl --label-col queue
	@echo "== the transformer arm: MiniLM fine-tuned with Ray Train (a short run: 3,000 emails, 2 epochs)"
	$(MR) data synth --n 3000 --seed 4 --out $(DEMO_DATA)/transformer-train.jsonl
	@set -e; out=$$($(MR) train transformer --data $(DEMO_DATA)/transformer-train.jsonl --label-col queue --epochs 2); \
	  echo "$$out"; version=$$(echo "$$out" | tail -n 1); echo "== $$version on long multi-paragraph mail"; \
	  $(MR) evaluate --model $$version --data $(DEMO_DATA)/long.jsonl --label-col queue
	$(MR) models list
	@echo "== serving the 50/50 linear/transformer experiment of configs/experiments.yaml on port $(DEMO_PORT)"
	@# The demo's configs: the shipped ones, with the scheduled jobs every minute (first 20 s after start) instead
	@# of hourly, so that they run while you watch.
	@rm -rf $(DEMO_CONFIGS) && cp -r configs $(DEMO_CONFIGS) && \
	  sed -i 's/^  monitor_every: .*/  monitor_every: 1m/; s/^  kpi_report_every: .*/  kpi_report_every: 1m/; s/^  first_run_after: .*/  first_run_after: 20s/' \
	    $(DEMO_CONFIGS)/monitoring.yaml
	@set -e; $(MR) --config-dir $(DEMO_CONFIGS) serve --port $(DEMO_PORT) > $(HOME_DIR)/serve.log 2>&1 & pid=$$!; \
	  trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	  for i in $$(seq 240); do $(FETCH) http://127.0.0.1:$(DEMO_PORT)/readyz >/dev/null 2>&1 && break; \
	    kill -0 $$pid 2>/dev/null || { cat $(HOME_DIR)/serve.log; exit 1; }; sleep 1; done; \
	  started=$$(date +%s); \
	  echo "== a mail gateway sends 400 emails; an audit reviews each one and sends its queue back as feedback"; \
	  $(MR) replay --data $(DEMO_DATA)/fresh.jsonl --label-col queue --n 400 --feedback --feedback-source audit --url http://127.0.0.1:$(DEMO_PORT); \
	  echo "== then 1,000 emails of drifted mail (new products, new errors, another queue mix)"; \
	  $(MR) replay --data $(DEMO_DATA)/drifted.jsonl --label-col queue --n 1000 --feedback --feedback-source audit --url http://127.0.0.1:$(DEMO_PORT); \
	  $(MR) experiment show --url http://127.0.0.1:$(DEMO_PORT); \
	  $(FETCH) http://127.0.0.1:$(DEMO_PORT)/metrics | grep '^mailroute_requests_total' | head -n 8; \
	  echo "== waiting for the scheduled monitoring run and KPI report (nobody calls them)"; \
	  for i in $$(seq 180); do \
	    n=$$(find $(HOME_DIR)/reports/experiments -name '*-kpi.json' -newermt "@$$started" 2>/dev/null | wc -l); \
	    m=$$(find $(HOME_DIR)/reports/monitoring/runs -name '*.json' -newermt "@$$started" 2>/dev/null | wc -l); \
	    [ "$$n" -gt 0 ] && [ "$$m" -gt 0 ] && break; sleep 1; done; \
	  ls -1 $(HOME_DIR)/reports/experiments/*-kpi.json $(HOME_DIR)/reports/monitoring/runs/*.json | tail -n 4; \
	  size=$$($(FETCH) http://127.0.0.1:$(DEMO_PORT)/dashboard | wc -c); \
	  echo "dashboard: http://127.0.0.1:$(DEMO_PORT)/dashboard ($$size bytes, served by the app)"; \
	  kill $$pid; wait $$pid 2>/dev/null || true; trap - EXIT
	$(MR) log stats
	@echo "== the experiment report (KPIs with intervals, SRM, guardrails, recommendation)"
	$(MR) experiment report --html $(HOME_DIR)/reports/experiment.html --csv $(HOME_DIR)/reports/daily-counts.csv
	@echo "== drift and quality monitoring over the last 24 h (exit code 3 means drift was found)"
	@$(MR) monitor run --window 24h; code=$$?; [ $$code -eq 0 ] || [ $$code -eq 3 ] || exit $$code
	@echo "reports: $(HOME_DIR)/reports   event log: $(HOME_DIR)/events.db   server log: $(HOME_DIR)/serve.log"
	@echo "the dashboard from the files alone: $(MR) dashboard --port 8050   (Evidently: $(BIN)/evidently ui --workspace $(HOME_DIR)/evidently)"

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
