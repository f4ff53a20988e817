# Every target depends on the virtual environment, so `make test` alone sets up a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := requirements.txt requirements-cluster.txt requirements-openslide.txt \
	requirements-dev.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) | cksum | cut -d' ' -f1)
DEMO := build/demo
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup test test-fast lint format demo report benchmark cluster-benchmark train train-scale \
	train-speed evaluate gpu-smoke clean

setup: $(STAMP)

$(STAMP): $(REQUIREMENTS)
	# Chromium (Debian's) for the report's browser test, if the machine has none
	command -v chromium >/dev/null || { $(SUDO) apt-get install -y -q chromium || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# the repo root on the venv's path, so notebooks and tools import stages/ and training/
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tissuenet-repo.pth"
	rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(PY) -m pytest

# The fast tier: every test not marked slow (main.py, the packed zip, notebooks, trainers, Ray).
test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Sample slides in the competition's test layout, graded by main.py exactly as the runtime would,
# then scored against their labels. Heatmaps for inspection land in $(DEMO)/heatmaps.
demo: setup $(DEMO)/data/submission_format.csv
	$(PY) main.py --data $(DEMO)/data --out $(DEMO)/submission.csv --save-heatmaps $(DEMO)/heatmaps
	$(PY) -m stages.metric $(DEMO)/submission.csv $(DEMO)/data/test_labels.csv

# The demo's sample slides in the competition's test layout (also test-submission's default DATA).
$(DEMO)/data/submission_format.csv: | setup
	$(PY) -m training.data.synthetic $(DEMO)/data --slides 8 --seed 7 --split test

# The demo's run as one HTML report (labels, overviews, patches), opened in headless Chromium;
# its screenshot and the worst slide's overview go to training/evaluate/results for the README.
report: demo
	$(PY) -m training.evaluate.report $(DEMO)/heatmaps --out $(DEMO)/report.html \
		--labels $(DEMO)/data/test_labels.csv --data $(DEMO)/data \
		--screenshot training/evaluate/results/report.png \
		--overlay training/evaluate/results/overlay.png

# Train both stages on generated slides, fit the decision, write assets/ (seeded; CPU by default).
# Work files (slides, cache, checkpoints, logs) go to $(TRAIN); a rerun resumes the data steps.
TRAIN := build/train
train: setup
	$(PY) -m training.pipeline $(TRAIN) assets

# Training at the real data's scale, measured: cache disk and seconds per slide, peak memory and
# open files of both trainers for 32, 128 and 512 generated slides and for slides at the real
# sizes of rows of the real metadata (a canvas included), loader rates, and the extrapolation
# to the 1,015-slide set. Slides and caches go to $(SCALE) and are reused by a rerun.
SCALE := build/train-scale
train-scale: setup
	$(PY) -m training.evaluate.train_scale $(SCALE) --publish training/evaluate/results

# Training throughput of the standard preset on the training device (the GPU when there is one;
# minutes there, hours on a CPU): per stage, the loader alone, the network on batches held in
# memory and the real trainer, in samples/s, with the GPU's utilisation. Slides, cache and runs
# go to $(SPEED); the table to training/evaluate/results/train_speed.md.
SPEED := build/train-speed
train-speed: setup
	$(PY) -m training.evaluate.train_speed $(SPEED) --publish training/evaluate/results

# The shipped assets on held-out generated slides (seeds never used in training): the cascade's
# score beside the detector-only and always-1 scores, and hotspot recall@k of annotated squares.
EVAL := build/evaluate
evaluate: setup $(EVAL)/test/submission_format.csv $(EVAL)/train/train_metadata.csv
	$(PY) -m training.evaluate --test $(EVAL)/test --train-set $(EVAL)/train --out $(EVAL)/run

$(EVAL)/test/submission_format.csv: | setup
	$(PY) -m training.data.synthetic $(EVAL)/test --slides 48 --seed 3001 --split test

$(EVAL)/train/train_metadata.csv: | setup
	$(PY) -m training.data.synthetic $(EVAL)/train --slides 24 --seed 3002 --split train

# Speed against exhaustive tiling, side by side: every mode on held-out, real-size and canvas
# slides, then the score under time limits. Slides and runs go to $(BENCH); the table and plots
# are copied to training/evaluate/results and the README's table is rewritten. About an hour on
# the 2-core CPU, a third of it generating the real-size slides (kept for the next run).
BENCH := build/benchmark
benchmark: setup
	$(PY) -m training.evaluate.benchmark $(BENCH) --limits --publish training/evaluate/results \
		--readme README.md

# Slides per hour with 1 and 2 Ray workers on this machine against main.py, on make benchmark's
# held-out and real-size sets (generated under $(BENCH) if absent, then kept).
cluster-benchmark: setup
	$(PY) -m training.evaluate.scaling $(BENCH) --publish training/evaluate/results

# Does this machine's GPU run the whole product? main.py on the GPU in float16 and float32 against
# the CPU, a short GPU training run, the GPU-trained assets graded, the benchmark's GPU mode: one
# line per step, the first degraded step fails. Without a usable GPU: "no usable GPU: <reason>",
# exit status 4. Work files go to $(GPU_SMOKE).
GPU_SMOKE := build/gpu-smoke
gpu-smoke: setup
	$(PY) -m training.evaluate.gpu_smoke $(GPU_SMOKE)

clean:
	rm -rf build submission .pytest_cache .ruff_cache

# --- Submission: pack, run as the runtime does, score (logic and tests: training/pack/package.py) ---
# make pack-submission [FORCE=1]                  submission/submission.zip: main.py, stages/, assets/
# make test-submission [DATA=dir] [TIME_LIMIT=s]  unzip to a fresh root, data/ read-only, no network
# make score [LABELS=csv]                         score submission/submission.csv
SUBMISSION := submission
DATA ?= $(DEMO)/data
LABELS ?= $(DATA)/test_labels.csv
TIME_LIMIT ?=

.PHONY: pack-submission test-submission score

pack-submission: setup
	$(PY) -m training.pack.package pack --out $(SUBMISSION)/submission.zip $(if $(FORCE),--force)

test-submission: setup $(if $(filter $(DEMO)/data,$(DATA)),$(DEMO)/data/submission_format.csv)
	$(PY) -m training.pack.package test --zip $(SUBMISSION)/submission.zip --data $(DATA) \
		--out-dir $(SUBMISSION) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT))

score: setup
	$(PY) -m training.pack.package score --submission $(SUBMISSION)/submission.csv --labels $(LABELS)
