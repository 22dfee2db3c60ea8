# Two entry points (see README): `make demo` and `make test` (lint, then the whole suite). Both create .venv
# and install everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.embedrl-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[video,index,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/embedrl demo --out demo-output

# Lint first: a style error fails CI in seconds instead of after the whole suite.
test: setup
	$(BIN)/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
