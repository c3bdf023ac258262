# readaptir — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: a CUDA build from PyPI on Linux GPU machines (a CPU build where a local wheel is preferred).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
export READAPTIR_DATA ?= $(abspath ../shared/beir)
CACHE ?= $(or $(READAPTIR_CACHE),cache)
RESULTS := $(CACHE)/results
# NO_RUN=1 renders tables from existing results without running any cell.
NO_RUN ?=
SWEEP = $(if $(NO_RUN),@echo "NO_RUN set: not running the sweep",$(PY) run.py -m)

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint plan table1 table2 table3 figure2 bench hostile clean-demo

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-11s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed ## create .venv and install readaptir (+ dev tools); EXTRAS=dev,gpu on GPU machines

demo: install ## embedded default: both tiny retrievers on the toy set, full pipeline, CPU, minutes
	$(PY) run.py -m experiment=demo
	$(PY) -m readaptir.report table1 --results-dir $(RESULTS) --out outputs/demo \
	    --models tiny-llama,tiny-mistral --datasets toy --experiment demo

test: install ## the test suite (CPU; real-data tests use READAPTIR_DATA, default ../shared/beir)
	$(PY) -m pytest -m "not gpu" -q

test-fast: install ## tests without the slow and real-data ones
	$(PY) -m pytest -m "not gpu and not slow and not real_data" -q

lint: install ## ruff lint + format check
	$(PY) -m ruff check readaptir tests experiments run.py
	$(PY) -m ruff format --check readaptir tests experiments run.py

plan: install ## cells, unique adapters/encodings and GPU-hours of the paper's full grid (loads nothing)
	$(PY) -m readaptir.grid.plan

table1: install ## Table 1 (in-domain adapter, both models × 14 datasets) → experiments/table1/
	$(SWEEP) experiment=table1
	$(PY) -m readaptir.report table1 --results-dir $(RESULTS) --out experiments/table1

table2: install ## Table 2 (test-passage ablation) → experiments/table2/
	$(SWEEP) experiment=table2
	$(PY) -m readaptir.report table2 --results-dir $(RESULTS) --out experiments/table2

table3: install ## Table 3 (MS-MARCO knowledge adapter) → experiments/table3/
	$(SWEEP) experiment=table3
	$(PY) -m readaptir.report table3 --results-dir $(RESULTS) --out experiments/table3

figure2: install ## Figure 2 (corpus size vs RA − Base) → experiments/figure2/
	$(SWEEP) experiment=figure2
	$(PY) -m readaptir.report figure2 --results-dir $(RESULTS) --out experiments/figure2

hostile: install ## hostile-input campaign, 62 cases (≈ 15 min on 2 CPU cores; not in CI): counts of wrong/lost/poisoned results
	$(PY) experiments/hostile.py

bench: install ## CPU benchmarks: training batching, encoding order, readapt memory (GPU shapes when CUDA)
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_encode.py
	$(PY) experiments/bench_readapt_memory.py
	mkdir -p $(CACHE) && $(PY) experiments/bench_verify.py --dir $(CACHE)
