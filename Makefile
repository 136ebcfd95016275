# The two commands a new user runs (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench

install:
	bash scripts/install.sh

demo: install  ## the main job: test-time search agents on openr/Arithmetic-v0 with SmolLM2-135M-Instruct, offline
	$(PY) -m experiments.benchmark

test: install  ## every default test (slow ones excluded: `pytest -m slow` runs those)
	$(PY) -m pytest -m "not slow" --timeout=900

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench:
	$(PY) -m experiments.bench_envs
