# One entry point for set-up, the demo and the tests. Every target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export DS_ACCELERATOR ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)

.PHONY: setup demo test clean

setup: $(STAMP)

# torch goes first and pinned when there is no CUDA: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q --disable-pip-version-check torch==2.13.0; fi
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/knowlm demo

test: setup
	$(PY) -m pytest -x -q

clean:
	rm -rf artifacts .pytest_cache
