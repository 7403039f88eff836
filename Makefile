# One command to run the stack, one to test it; both build .venv from pyproject.toml first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint typecheck unit integration gpu gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,heif]'
	@touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/visionq up $(ARGS)

lint: install
	$(BIN)/ruff check services models tests examples
	$(BIN)/ruff format --check services models tests examples

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

gpu: install
	$(BIN)/pytest -q tests/gpu

# Driver report, tests/gpu (recompiles counted), resnet50 fp16 bench with CPU and GPU decode
# against the raw limit on the same path: gpu-check/gpu-check.json + .png. Without CUDA it
# prints the plan and exits 0.
gpu-check: install
	$(BIN)/python -m services.bench.gpu_check --out gpu-check

test: lint typecheck
	$(BIN)/pytest -q -ra tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
