# Everything runs in a local virtual environment (.venv), created when missing and
# re-installed only when setup.py changes.
#
# Python 3.11 to 3.13: PYTHON=... when given, else the newest python3.X that actually starts
# (a pyenv shim for a version that is not active exists but fails: it does not count).
SUPPORTED_PYTHONS := 3.13 3.12 3.11
PYTHON ?= $(firstword $(foreach v,$(SUPPORTED_PYTHONS),$(shell python$(v) -c 'import sys' >/dev/null 2>&1 && echo python$(v))))
VENV ?= .venv
# dev (tests, lint, the tests' local object stores), gcp (Dataflow and gs://), aws (s3://),
# convert (PyTorch, only to read the authors' checkpoint).
# `make bench` adds bench (the index libraries faiss is compared with; hnswlib compiles from source).
EXTRAS ?= dev,convert,gcp,aws
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CACHE := .cache
STANDIN := $(CACHE)/models/standin
# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides real output.
export TF_CPP_MIN_LOG_LEVEL ?= 2

AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_HOME_DIR := $(CACHE)/airflow_home

.PHONY: help venv browser ffmpeg test test-airflow demo bench lint clean

help:
	@echo "make demo   - create the environment if needed, then run the demo on the bundled stand-in model"
	@echo "make test   - create the environment if needed, then run the test suite"
	@echo "make test-airflow - the Airflow DAG in its own environment (.venv-airflow), with a real run"
	@echo "make bench  - run the benchmarks and rewrite BENCHMARKS.md"
	@echo "make lint   - ruff"
	@echo "make clean  - remove the environment and caches"

venv: $(STAMP)

$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "no Python 3.11 to 3.13 starts here: install one, or run make PYTHON=/path/to/python3.X"; exit 2; }
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

$(STANDIN)/saved_model.pb: $(STAMP)
	$(PY) -m s3d.export --output $(STANDIN) --seed 0 --force

# Installs Debian package $(1) when command $(1) is missing and we can (root with apt-get);
# otherwise says what is skipped: $(2).
define apt_tool
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(1)"; \
	    (apt-get update -qq && apt-get install -y -qq $(1)) >/dev/null 2>&1 || echo "$(1) could not be installed: $(2)"; \
	  else echo "$(1) is not installed and cannot be installed here: $(2)"; fi; }
endef

# The search page is tested in a real headless browser (Debian's chromium).
browser:
	$(call apt_tool,chromium,the browser test will be skipped)

# Test files run in parallel (pytest-xdist), a file to a worker so module fixtures run once.
# One worker more than the cores (at most 4): with one a core, the cores were busy 1.83 of 2 (tests
# wait on local servers, child processes and leases), and a third worker took the suite from 365 to
# 343 s on 2 cores (AMD EPYC, December 2026). The files run longest first (tests/conftest.py,
# FILE_SECONDS), in that order: no reordering by xdist.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, (os.cpu_count() or 1) + 1))")
test: $(STAMP) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# Airflow 3.3 supports Python 3.10 to 3.13, which covers every Python the project supports.
$(AIRFLOW_STAMP): deploy/airflow/requirements.txt
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r deploy/airflow/requirements.txt
	@touch $(AIRFLOW_STAMP)

# Airflow in its own environment; the DAG runs the job with the project's interpreter.
test-airflow: $(STAMP) $(AIRFLOW_STAMP)
	rm -rf $(AIRFLOW_HOME_DIR) && mkdir -p $(AIRFLOW_HOME_DIR)
	export AIRFLOW_HOME=$(abspath $(AIRFLOW_HOME_DIR)) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	  AIRFLOW__CORE__DAGS_FOLDER=$(abspath deploy/airflow/dags) S3D_PYTHON=$(abspath $(PY)) \
	  S3D_SETUP_FILE=$(abspath setup.py); \
	  $(AIRFLOW_VENV)/bin/airflow db migrate > $(AIRFLOW_HOME_DIR)/db_migrate.log 2>&1 && \
	  $(AIRFLOW_VENV)/bin/python -m pytest -q -p no:cacheprovider deploy/airflow/tests

demo: $(STAMP) $(STANDIN)/saved_model.pb
	$(PY) -m pipeline.demo --model $(STANDIN)

# The decode benchmark compares with the ffmpeg command line (Debian's ffmpeg).
ffmpeg:
	$(call apt_tool,ffmpeg,the decode benchmark runs without its comparison)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS),bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) $(STANDIN)/saved_model.pb ffmpeg
	$(PY) -m benchmarks.run --model $(STANDIN) --output BENCHMARKS.md

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) $(CACHE)
