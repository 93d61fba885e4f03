# `make demo` and `make test` each build .venv from nothing when it is missing or stale.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# tf-agents needs pygame 2.1.3, which has wheels only up to Python 3.11.
PYTHON ?= $(shell for p in python3.11 python3.10 python3 python; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 10), (3, 11)))' 2>/dev/null; then echo $$p; break; fi; done)

.PHONY: demo test test-slow test-all venv clean

demo: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(VENV)/bin/tfmarl quickstart

# The inner loop: everything but the tests marked slow (pytest.ini). CI runs both halves.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests

test-all: test test-slow

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: tfmarl needs Python 3.10 or 3.11 (tf-agents depends on pygame 2.1.3, which has no wheels for 3.12+)."; \
		echo "Found instead: $$(python3 --version 2>&1). Install 3.11 (e.g. 'pyenv install 3.11') or run 'make PYTHON=/path/to/python3.11 ...'."; \
		exit 1; fi
	@if [ -x $(PY) ] && ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 10), (3, 11)))'; then rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -m pip check
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
