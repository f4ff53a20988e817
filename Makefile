# Every target depends on the virtual environment, so `make test` alone sets up a fresh machine.
# `make` alone (or `make help`) lists the targets: the `## ` comment after each target's name.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := requirements.txt requirements-cluster.txt requirements-openslide.txt \
	requirements-train.txt requirements-dev.txt pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) | cksum | cut -d' ' -f1)
DEMO := build/demo
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help setup test test-fast lint format demo report benchmark cluster-benchmark train light-price \
	train-scale train-speed evaluate gpu-smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/\1\t\2/' | \
		awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with the pinned packages and the project (editable, `tissuenet`)

$(STAMP): $(REQUIREMENTS)
	# Chromium (Debian's) for the report's browser test, if the machine has none
	command -v chromium >/dev/null || { $(SUDO) apt-get install -y -q chromium || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# the project itself, editable: stages/ and training/ importable everywhere, `tissuenet` on PATH
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tissuenet-repo.pth"
	rm -f $(VENV)/.installed-* && touch $@

test: setup ## the whole suite (what .ci/run calls)
	$(PY) -m pytest

# The fast tier: every test not marked slow (main.py, the packed zip, notebooks, trainers, Ray).
test-fast: setup ## the tests not marked slow (about 2 1/4 min on 2 idle cores)
	$(PY) -m pytest -m "not slow"

lint: setup ## ruff check and format check, and the import layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# imports go one way (pyproject.toml, [tool.importlinter])
	$(VENV)/bin/lint-imports --no-logo --no-cache

format: setup ## ruff fix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Sample slides in the competition's test layout, graded by main.py exactly as the runtime would,
# then scored against their labels. Heatmaps for inspection land in $(DEMO)/heatmaps.
demo: setup $(DEMO)/data/submission_format.csv ## grade 8 sample slides with main.py and score them
	$(PY) main.py --data $(DEMO)/data --out $(DEMO)/submission.csv --save-heatmaps $(DEMO)/heatmaps
	$(PY) -m stages.metric $(DEMO)/submission.csv $(DEMO)/data/test_labels.csv

# The demo's sample slides in the competition's test layout, of the realistic cohort (also
# test-submission's default DATA).
$(DEMO)/data/submission_format.csv: | setup
	$(PY) -m training.data.synthetic $(DEMO)/data --slides 8 --seed 7 --split test --cohort realistic

# The demo's run as one HTML report (labels, overviews, patches), opened in headless Chromium;
# its screenshot and the worst slide's overview go to training/evaluate/results for the README.
report: demo ## the demo's run as one HTML report, screenshot in headless Chromium
	$(PY) -m training.inspect.report $(DEMO)/heatmaps --out $(DEMO)/report.html \
		--labels $(DEMO)/data/test_labels.csv --data $(DEMO)/data \
		--screenshot training/evaluate/results/report.png \
		--overlay training/evaluate/results/overlay.png

# Train both stages on 128 generated slides of the realistic cohort (small worst lesions graded by
# depth, six centres, noisy labels), fit the decision, write assets/ (seeded; CPU by default).
# Work files (slides, cache, checkpoints, logs) go to $(TRAIN); a rerun resumes the data steps.
TRAIN := build/train
train: setup ## train both stages on realistic generated slides and write assets/
	$(PY) -m training.pipeline $(TRAIN) assets --cohort realistic

# Training at the real data's scale, measured: cache disk and seconds per slide, peak memory and
# open files of both trainers for 32, 128 and 512 generated slides and for slides at the real
# sizes of rows of the real metadata (a canvas included), loader rates, and the extrapolation
# to the 1,015-slide set. Slides and caches go to $(SCALE) and are reused by a rerun.
SCALE := build/train-scale
train-scale: setup ## training memory, open files and disk at the real data's scale
	$(PY) -m training.bench.train_scale $(SCALE) --publish training/evaluate/results

# Training throughput of the standard preset on the training device (the GPU when there is one;
# minutes there, hours on a CPU): per stage, the loader alone, the network on batches held in
# memory and the real trainer, in samples/s, with the GPU's utilisation. Slides, cache and runs
# go to $(SPEED); the table to training/evaluate/results/train_speed.md.
SPEED := build/train-speed
train-speed: setup ## training throughput per stage (loader, network, trainer)
	$(PY) -m training.bench.train_speed $(SPEED) --publish training/evaluate/results

# The shipped assets on held-out slides of the realistic generated cohort (seeds never used in
# training): the cascade's score beside detector-only, always-1, exhaustive tiling and the two
# oracle rows, against the written labels (the headline) and the true ones; the worst lesions'
# recall, the score by centre, hotspot recall@k of annotated squares, and the score-time curve
# (its table and plot copied to training/evaluate/results).
EVAL := build/evaluate-realistic
evaluate: setup $(EVAL)/test/submission_format.csv $(EVAL)/train/train_metadata.csv ## the shipped assets on held-out slides
	$(PY) -m training.evaluate --test $(EVAL)/test --train-set $(EVAL)/train --out $(EVAL)/run \
		--curve --publish training/evaluate/results

$(EVAL)/test/submission_format.csv: | setup
	$(PY) -m training.data.synthetic $(EVAL)/test --cohort realistic --slides 48 --seed 3001 --split test

$(EVAL)/train/train_metadata.csv: | setup
	$(PY) -m training.data.synthetic $(EVAL)/train --cohort realistic --slides 24 --seed 3002 --split train

# The light recipe's price in score: make train's slides trained again from DrivenData's light
# files alone and with the TIFs of 10 % of them (training.pipeline --source light), graded with the
# shipped (TIF-trained) assets by main.py on make evaluate's held-out TIF slides. The training
# slides are make train's (generated here when build/train has none); light folders, runs and
# assets go to $(PRICE), the table to training/evaluate/results. About 20 min on 2 cores.
PRICE := build/light-price
light-price: setup $(TRAIN)/data/train_metadata.csv $(EVAL)/test/submission_format.csv $(EVAL)/train/train_metadata.csv ## the light recipe's price in score
	$(PY) -m training.evaluate.light $(PRICE) --tif-data $(TRAIN)/data --test $(EVAL)/test \
		--train-set $(EVAL)/train --publish training/evaluate/results

$(TRAIN)/data/train_metadata.csv: | setup
	$(PY) -m training.data.synthetic $(TRAIN)/data --cohort realistic --slides 128 --seed 1000 --split train

# Speed against exhaustive tiling, side by side: every mode on held-out, real-size and canvas
# slides, then the score under time limits. Slides and runs go to $(BENCH); the table and plots
# are copied to training/evaluate/results and docs/benchmarks.md's table is rewritten. About an
# hour on the 2-core CPU, a third of it generating the real-size slides (kept for the next run).
BENCH := build/benchmark
benchmark: setup ## speed against exhaustive tiling, and the score under time limits
	$(PY) -m training.bench.benchmark $(BENCH) --limits --publish training/evaluate/results \
		--docs docs/benchmarks.md

# Slides per hour with 1 and 2 Ray workers on this machine against main.py, on make benchmark's
# held-out and real-size sets (generated under $(BENCH) if absent, then kept).
cluster-benchmark: setup ## slides per hour with 1 and 2 Ray workers
	$(PY) -m training.bench.scaling $(BENCH) --publish training/evaluate/results

# Does this machine's GPU run the whole product? main.py on the GPU in float16 and float32 against
# the CPU, a short GPU training run, the GPU-trained assets graded, the benchmark's GPU mode: one
# line per step, the first degraded step fails. Without a usable GPU: "no usable GPU: <reason>",
# exit status 4. Work files go to $(GPU_SMOKE).
GPU_SMOKE := build/gpu-smoke
gpu-smoke: setup ## on a GPU machine: the whole product on the GPU against the CPU
	$(PY) -m training.bench.gpu_smoke $(GPU_SMOKE)

clean: ## remove build/, submission/ and caches
	rm -rf build submission .pytest_cache .ruff_cache

# --- Submission: pack, run as the runtime does, score (logic: training/pack/; tests: test_package) ---
# make pack-submission [FORCE=1]                  submission/submission.zip: main.py, stages/, assets/
# make test-submission [DATA=dir] [TIME_LIMIT=s]  unzip to a fresh root, data/ read-only, no network
# make score [LABELS=csv]                         score submission/submission.csv
SUBMISSION := submission
DATA ?= $(DEMO)/data
LABELS ?= $(DATA)/test_labels.csv
TIME_LIMIT ?=

.PHONY: pack-submission test-submission score

pack-submission: setup ## submission/submission.zip: main.py, stages/, assets/
	$(PY) -m training.pack.package pack --out $(SUBMISSION)/submission.zip $(if $(FORCE),--force)

test-submission: setup $(if $(filter $(DEMO)/data,$(DATA)),$(DEMO)/data/submission_format.csv) ## run the zip as the runtime does (DATA=dir, TIME_LIMIT=s)
	$(PY) -m training.pack.package test --zip $(SUBMISSION)/submission.zip --data $(DATA) \
		--out-dir $(SUBMISSION) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT))

score: setup ## score submission/submission.csv against LABELS
	$(PY) -m training.pack.package score --submission $(SUBMISSION)/submission.csv --labels $(LABELS)
