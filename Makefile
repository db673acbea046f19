# Two commands on a fresh machine:  make demo  (set up + run the demo study),  make test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true
export RAY_USAGE_STATS_ENABLED ?= 0

$(BIN)/s2r: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

.PHONY: install demo test lint
install: $(BIN)/s2r

demo: $(BIN)/s2r
	$(BIN)/s2r run configs/demo.yaml

lint: $(BIN)/s2r
	$(BIN)/ruff check s2r_ray tests benchmarks
	$(BIN)/ruff format --check s2r_ray tests benchmarks

test: lint
	$(BIN)/pytest -q
