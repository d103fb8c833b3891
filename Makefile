# One entry point for set-up, the demo and the tests. Every target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DS_ACCELERATOR ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)

.PHONY: setup demo test clean

setup: $(STAMP)

# torch goes first and pinned when there is no CUDA: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q --disable-pip-version-check torch==2.13.0; fi
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,web]'
	@# The web UI's browser test drives Debian's chromium (playwright's own download cannot run here).
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "warning: chromium did not install; the browser test skips (fails under CI=true)"; fi
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/knowlm demo

test: setup
	$(PY) -m pytest -x -q

clean:
	rm -rf artifacts .pytest_cache
