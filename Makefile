VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# What serving needs, without the dev tools.
RUN_STAMP := $(VENV)/.installed-run
# make run PORT=8080 HOST=0.0.0.0 (unset: serve's defaults, 127.0.0.1:8000)
PORT ?=
HOST ?=

.PHONY: run test lint install-dev clean emulate

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev,examples]'
	touch $(STAMP)

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

install-dev: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/hybrid-router serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(STAMP)
	$(PY) -m pytest -q -n 4

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

emulate: $(STAMP)
	$(VENV)/bin/hybrid-router emulate-modal

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
