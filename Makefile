# Mia: every target bootstraps its own virtual environment on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
SUBSCRIBERS ?= 20000
DAYS ?= 120
DEMO_START ?= 2026-01-01
# The Open Bandit Dataset sample shipped inside this wheel validates off-policy evaluation on real
# logged bandit data (tests/test_ope.py reads it from the wheel; obp itself is never installed).
OBP_WHEEL := .cache/obp/obp-0.4.1-py3-none-any.whl

export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: help venv demo test bench bench-scale bench-exploration bench-quality lint format clean

help:
	@echo "make demo   - simulate a telco world and run the nightly pipeline on it"
	@echo "make test   - run the test suite"
	@echo "make bench  - run the benchmarks (features, gathering offers; vs DuckDB and pandas/polars)"
	@echo "make bench-scale - the nightly at 100k, 300k and 1M subscribers: time per step, peak memory"
	@echo "make bench-exploration - Thompson sampling vs the category slot for a new offer"
	@echo "make bench-quality - model quality: Mia vs popularity, ALS, one LightGBM and the oracle"
	@echo "make lint   - ruff check and format check"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=..."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.demo --data-dir $(DATA) --subscribers $(SUBSCRIBERS) --days $(DAYS) --start $(DEMO_START)

test: $(STAMP) $(OBP_WHEEL)
	$(BIN)/python -m pytest -q

# Fetched once and re-used; without a reachable package index the OBD tests skip.
$(OBP_WHEEL): | $(STAMP)
	-$(BIN)/pip download --quiet --no-deps --timeout 20 --retries 1 obp==0.4.1 -d .cache/obp

bench: $(STAMP)
	$(BIN)/python -m benchmarks.features
	$(BIN)/python -m benchmarks.gather

bench-scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale

bench-exploration: $(STAMP)
	$(BIN)/python -m benchmarks.exploration

bench-quality: $(STAMP)
	$(BIN)/python -m benchmarks.quality

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
