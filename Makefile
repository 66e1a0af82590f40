# `make demo` and `make test` (fast); `make test-integration` (builds and installs the wheel, fuzzes the
# server's OpenAPI schema with schemathesis, runs the llama.cpp tests: minutes).
# All build .venv first (CPU torch, no CUDA download).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GGUF_STAMP := $(VENV)/.installed-gguf

.PHONY: demo test test-integration lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/krmini demo

# Tests run on one thread each (tests/conftest.py), so one worker per core (at most 4) shortens the wall time:
# 233 s against 311 s in one process on 2 cores.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n auto --maxprocesses=4

# llama-cpp-python compiles llama.cpp when it installs (minutes), so only this target installs it, once;
# lm-evaluation-harness, which the KoBEST integration test runs beside `krmini eval kobest`, likewise.
LMEVAL_STAMP := $(VENV)/.installed-lmeval

$(GGUF_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[gguf]'
	touch $(GGUF_STAMP)

$(LMEVAL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[lmeval]'
	touch $(LMEVAL_STAMP)

test-integration: $(STAMP) $(GGUF_STAMP) $(LMEVAL_STAMP)
	$(PY) -m pytest -q -m 'integration or llama_cpp'

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
