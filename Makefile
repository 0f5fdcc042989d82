# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   - create .venv, install, run the embedded broker + a worker + a synthetic stream
#   make test   - create .venv, install, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo up test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Compile the shipped rules' Hyperscan databases once into ~/.cache/llmtrail (a minute on
	# the first install, then instant): workers and tests start warm instead of compiling.
	$(BIN)/llmtrail rules warm
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmtrail demo

up: $(STAMP)
	$(BIN)/llmtrail up

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/engine_speed.py
	$(BIN)/python bench/engine_floor.py
	$(BIN)/python bench/pipeline_speed.py
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache llmtrail-data
