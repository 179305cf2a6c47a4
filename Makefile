# The two set-up commands of the README. Both create .venv when missing and install the package
# with its extras, pinned through constraints.txt (the CPU build of torch on this machine).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dscoder-installed

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dscoder quickstart

# The tests in TEST_WORKERS parallel workers (one test file each at a time, one thread each),
# then the tests that measure time or speed on this machine (marked `alone`), with nothing beside them
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not alone"
	$(PY) -m pytest -q -m alone

# ruff (lint and format) and the layers contract (.importlinter, docs/design.md): `make test` runs it first
lint: $(STAMP)
	$(VENV)/bin/ruff check dscoder tests bench
	$(VENV)/bin/ruff format --check dscoder tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs/quickstart .pytest_cache
