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

.PHONY: demo test test-fast bench bench-run bench-levers bench-noisy bench-representations bench-ensemble bench-pipeline clean

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

.bench/small/train_curated.csv: | $(VENV)/.runtime
	$(BIN)/python $(SHARED)/bench/make_dataset.py --out .bench/small --scale small --overwrite

# Throughput: feature extraction against librosa, training and inference (a few minutes).
bench: $(VENV)/.dev .bench/small/train_curated.csv
	$(BIN)/audiotag bench features .bench/small --report BENCHMARKS.md
	$(BIN)/audiotag bench training .bench/small --cache-dir .bench/cache --report BENCHMARKS.md
	$(BIN)/audiotag bench channels .bench/small --limit 200 --report BENCHMARKS.md

# The end-to-end benchmark run: the default config (5 folds, curated only) trained, the test set
# predicted and scored by the shared scorer, timed from a cold feature cache (about an hour on 2 cores).
bench-run: $(VENV)/.runtime .bench/small/train_curated.csv
	rm -rf .bench/run .bench/run-cache .bench/submission.csv
	time ( $(BIN)/audiotag train --data .bench/small --out .bench/run --cache-dir .bench/run-cache -q && \
	  $(BIN)/audiotag predict .bench/run --data .bench/small --out .bench/submission.csv -q && \
	  $(BIN)/python $(SHARED)/bench/score.py --truth .bench/small/test_labels.csv --submission .bench/submission.csv )

# The dev split (ESC-50 fold 1 for training, fold 2's unseen recordings for its test clips): where
# settings are chosen, never on the small benchmark's own test set.
.bench/dev/train_curated.csv: | $(VENV)/.runtime
	$(BIN)/python $(SHARED)/bench/make_dataset.py --out .bench/dev --scale small --train-folds 1 --test-folds 2 --seed 1 --overwrite

# The levers for unseen recordings against the default, fold 0, 100 epochs, 2 seeds (~2.5 h on 2 cores).
bench-levers: $(VENV)/.runtime .bench/dev/train_curated.csv
	$(BIN)/audiotag ablate --data .bench/dev --out .bench/levers --cache-dir .bench/dev-cache --variants levers \
	  --seeds 0,1 --set 'train.only_folds=[0]' --set train.epochs=100 -q

# Ablations on the small benchmark, one seed, width-16 CNNs for 30 epochs (hours on 2 cores; each
# re-run continues where it stopped), and the ensemble of the noisy-set runs.
ABLATE := $(BIN)/audiotag ablate --data .bench/small --cache-dir .bench/cache --seeds 0 \
	--set model.width=16 --set train.epochs=30 -q
bench-noisy: $(VENV)/.runtime .bench/small/train_curated.csv
	$(ABLATE) --out .bench/ablation-noisy --strategies noisy
	$(BIN)/audiotag audit .bench/ablation-noisy/curated-s0 --out .bench/audit -q

bench-representations: $(VENV)/.runtime .bench/small/train_curated.csv
	$(ABLATE) --out .bench/ablation-representations --variants representations

bench-ensemble: bench-noisy
	$(BIN)/audiotag ensemble .bench/ablation-noisy/*-s0 --out .bench/ensemble -q

# The cpu-small recipe end to end (hours on 2 cores; re-running continues), scored by the shared scorer.
bench-pipeline: $(VENV)/.runtime .bench/small/train_curated.csv
	time $(BIN)/audiotag pipeline cpu-small --data .bench/small --out .bench/pipeline --cache-dir .bench/cache -q
	$(BIN)/python $(SHARED)/bench/score.py --truth .bench/small/test_labels.csv --submission .bench/pipeline/submission.csv

clean:
	rm -rf demo runs .bench .pytest_cache
