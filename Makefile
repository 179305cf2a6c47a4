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

test: lint
	$(PY) -m pytest -q

# ruff (lint and format) and the layers contract (.importlinter, docs/design.md): `make test` runs it first
lint: $(STAMP)
	$(VENV)/bin/ruff check dscoder tests bench
	$(VENV)/bin/ruff format --check dscoder tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs/quickstart .pytest_cache
