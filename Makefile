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

# TEST_WORKERS: pytest processes (pytest-xdist); whole test files go to one process, longest first, the published
# architectures' files to the same one (tests/conftest.py)
TEST_WORKERS ?= 2

test: setup setup-system
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration and not arch"

lint: setup
	$(VENV)/bin/ruff check spf_lib components pipelines bench tests

clean:
	rm -rf .spf .pytest_cache
