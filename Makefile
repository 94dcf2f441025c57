# Set-up and the main jobs. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine install the CUDA build into .venv first.
TORCH ?= torch==2.13.0

.PHONY: demo test test-fast bench bench-slices bench-contrastive lint clean gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,lab]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/plcl demo --out demo_output

# One pytest worker a core (at most 4), each test file on one worker, one torch thread a process: why and what it
# saves in docs/development.md ("Tests"). Only the tests run so: a user's run keeps every core.
# --durations: the slowest tests in every run's log, so the suite's creep toward its 10 minutes shows early.
PYTEST_PARALLEL := -n auto --maxprocesses 4 --dist loadfile
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest Testing -q -ra $(PYTEST_PARALLEL) --durations=15

# The quick loop while editing: every test but the end-to-end runs marked slow; stops at the first failure.
test-fast: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest Testing -q -ra -x $(PYTEST_PARALLEL) -m "not slow"

bench: $(VENV)/.installed
	$(VENV)/bin/plcl bench --data ../shared/data/acdc --out bench_output $(BENCH_ARGS)

# Mean Dice against annotated slices (docs/cli.md, "Annotate a few slices"): K slices per annotated case for 1 and
# 2 patients, the same number of slices as whole volumes where some fit, and whole cases; then curve.md/.png.
SLICE_BENCH_ARGS ?= --methods supervised,plcl --throughput-iterations 0
bench-slices: $(VENV)/.installed
	for P in 1 2; do \
	  for K in 1 2 3 5; do \
	    $(VENV)/bin/plcl bench --data ../shared/data/acdc --n-labeled-patients $$P --labeled-slices $$K \
	      --out bench_slices/p$${P}_k$$K $(SLICE_BENCH_ARGS) || exit 1; \
	    $(VENV)/bin/plcl bench --data ../shared/data/acdc --n-labeled-patients $$P --labeled-slices $$K \
	      --as-whole-volumes --out bench_slices/p$${P}_k$${K}_whole $(SLICE_BENCH_ARGS) || true; \
	  done; \
	  $(VENV)/bin/plcl bench --data ../shared/data/acdc --n-labeled-patients $$P --out bench_slices/p$${P}_all \
	    $(SLICE_BENCH_ARGS) || exit 1; \
	done
	$(PY) -m PLCLSegmentationLib.engine.lab.slice_curve bench_slices

# Issue 29: does the local contrastive loss pay, in the paper's protocol and ours? Each protocol (docs/cli.md,
# "Protocols"; 2-volumes is --n-labeled-volumes 2) x methods plcl, self_training, plcl_paper, plcl_paper without its
# contrastive term (the paper's recipe then learns from the annotated slices alone) and the paper's recipe as
# self-training (its pseudo-labels in the segmentation loss instead: the paper's own baseline) x seeds, at the
# default budget, one folder per protocol and seed, then each protocol pooled into bench_contrastive/PROTOCOL/pooled.
# 4 protocols x 5 methods x 3 seeds = 60 runs of about 20 min of training and 4 min of prediction each on 2 CPU
# cores: about 24 hours in all (a protocol: 6 hours, a seed of it: 2 hours).
CONTRASTIVE_PROTOCOLS ?= one-volume 2-volumes one-patient few-slices
CONTRASTIVE_SEEDS ?= 0 1 2
CONTRASTIVE_ARGS ?= --methods plcl,self_training,plcl_paper --variant plcl_paper+no_contrastive:contrastive_weight=0 \
	--variant plcl_paper+self_training:contrastive_weight=0,pseudo_segmentation_weight=1 \
	--throughput-iterations 0 --propagation-frames 0
# On a GPU: CONTRASTIVE_DEVICE_ARGS="--device cuda --iterations 2400" (the CPU's 20 minutes, in iterations).
CONTRASTIVE_DEVICE_ARGS ?=
bench-contrastive: $(VENV)/.installed
	for P in $(CONTRASTIVE_PROTOCOLS); do \
	  case $$P in 2-volumes) O="--n-labeled-volumes 2";; *) O="--protocol $$P";; esac; \
	  for S in $(CONTRASTIVE_SEEDS); do \
	    $(VENV)/bin/plcl bench --data ../shared/data/acdc $$O --seeds $$S --out bench_contrastive/$$P/seed$$S \
	      $(CONTRASTIVE_ARGS) $(CONTRASTIVE_DEVICE_ARGS) || exit 1; \
	  done; \
	  $(PY) -m PLCLSegmentationLib.engine.lab.bench_pool bench_contrastive/$$P/pooled \
	    $(foreach S,$(CONTRASTIVE_SEEDS),bench_contrastive/$$P/seed$(S)) || exit 1; \
	done

# On a machine with an NVIDIA GPU, with the machine's own CUDA torch (not .venv): docs/development.md, "GPU check".
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) Testing/gpu_check.py $(if $(WHEELS),--wheels $(WHEELS)) $(if $(DATA),--data $(DATA)) $(GPU_CHECK_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check PLCLSegmentation Testing

clean:
	rm -rf $(VENV) demo_output bench_output bench_slices bench_contrastive
