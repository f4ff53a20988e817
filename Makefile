# Every target depends on the virtual environment, so `make test` alone sets up a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
DEMO := build/demo

.PHONY: setup test lint format demo benchmark clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# the repo root on the venv's path, so notebooks and tools import stages/ and training/
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tissuenet-repo.pth"
	rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Sample slides in the competition's test layout, graded by main.py exactly as the runtime would,
# then scored against their labels. Heatmaps for inspection land in $(DEMO)/heatmaps.
demo: setup
	test -f $(DEMO)/data/submission_format.csv || \
		$(PY) -m training.synthetic $(DEMO)/data --slides 8 --seed 7 --split test
	$(PY) main.py --data $(DEMO)/data --out $(DEMO)/submission.csv --save-heatmaps $(DEMO)/heatmaps
	$(PY) -m stages.metric $(DEMO)/submission.csv $(DEMO)/data/test_labels.csv

# Per-slide seconds by stage and peak memory on generated slides, plus a real-size canvas.
benchmark: setup
	$(PY) -m training.benchmark build/benchmark

clean:
	rm -rf build submission .pytest_cache .ruff_cache
