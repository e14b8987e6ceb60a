# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the whole pipeline locally (spf demo)
#   make test   set up .venv (+ system packages for report tests) and run the test suite
.PHONY: setup setup-system demo test test-fast lint clean

VENV ?= .venv
PY := $(VENV)/bin/python
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

setup:
	bash scripts/setup.sh

setup-system:
	@if [ -f scripts/setup-system.sh ]; then bash scripts/setup-system.sh; fi

demo: setup
	$(VENV)/bin/spf demo

test: setup setup-system
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration and not arch"

lint: setup
	$(VENV)/bin/ruff check spf_lib components pipelines bench tests

clean:
	rm -rf .spf .pytest_cache
