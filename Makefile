# The two commands a new user runs (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench

install:
	bash scripts/install.sh

demo: install  ## the main job: OpenR's pipeline (SFT -> step labels -> PRM -> search at equal compute), offline
	$(PY) -m experiments.main_job

test: install  ## every default test (slow ones excluded: `pytest -m slow` runs those)
	$(PY) -m pytest -m "not slow" --timeout=900

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench:
	$(PY) -m experiments.bench_envs
