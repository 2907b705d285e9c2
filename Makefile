# One venv for the kernel and every in-repo plugin. torch is pinned first (see
# requirements/constraints.txt): an open range would make pip fetch a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c requirements/constraints.txt
PLUGINS := $(wildcard plugins/*/pyproject.toml) $(wildcard examples/*/pyproject.toml)

.PHONY: serve test lint protos setup setup-kernel clean

## serve: install the kernel and serve the built-in demo repository (gRPC :8500, HTTP :8501)
serve: $(VENV)/.kernel
	$(VENV)/bin/dl-inference serve $(ARGS)

## test: install everything (kernel, plugins, test tools) and run lint + the whole test suite
test: $(VENV)/.all
	sh scripts/install_system_deps.sh
	sh scripts/install_reference_servers.sh
	$(VENV)/bin/ruff check .
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.all
	$(VENV)/bin/ruff check .

## protos: regenerate the protobuf modules from proto/ and plugins/*/proto/
protos: $(VENV)/.all
	$(PY) scripts/gen_protos.py

setup: $(VENV)/.all
setup-kernel: $(VENV)/.kernel

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.kernel: $(VENV)/bin/python pyproject.toml requirements/constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.all: $(VENV)/.kernel $(PLUGINS) requirements/constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
