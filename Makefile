VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: run test lint install-dev clean emulate

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev,examples]'
	touch $(STAMP)

install-dev: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hybrid-router serve

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

emulate: $(STAMP)
	$(VENV)/bin/hybrid-router emulate-modal

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
