# Two entry points for a fresh machine: `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# glibc returns and re-faults memory at every step otherwise (see BENCHMARKS.md); it must be
# in the environment before the process starts, so it is set here for every target.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000

.PHONY: demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/audiotag demo --out demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.dev
	test -f .bench/small/train_curated.csv || $(BIN)/python $(SHARED)/bench/make_dataset.py --out .bench/small --scale small --overwrite
	$(BIN)/audiotag bench features .bench/small --report BENCHMARKS.md

clean:
	rm -rf demo runs .bench .pytest_cache
