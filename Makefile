# cdc — the two commands a newcomer needs:
#   make quickstart   replay recorded Cassandra segments through masking into an embedded
#                     ClickHouse and a JSON-lines file (no servers)
#   make test         install and start every server, then lint, type-check and run all tests
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := packages/cdc-core packages/cdc-masking packages/cdc-sink-postgres packages/cdc-sink-timescale packages/cdc-sink-clickhouse
EXAMPLE_PLUGIN := tests/thirdparty/cdc-sink-example
# Optional compiled accelerators (Rust + pyo3, built by maturin): each packages/*-native is a
# distribution of its own that a pure-Python package uses when it is importable.
NATIVE_PACKAGES := $(wildcard packages/*-native)
NATIVE_SOURCES := $(foreach p,$(NATIVE_PACKAGES),$(p)/pyproject.toml $(p)/Cargo.toml $(wildcard $(p)/src/*.rs))
# Rust builds are cached outside the repository so a fresh clone rebuilds only what changed.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/cdc-cargo-target
# rustup installs into ~/.cargo/bin, which a non-login shell (CI) may not have on its PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)
STAMP := $(VENV)/.installed

.PHONY: help venv quickstart lint typecheck isolation services-up services-down native-check test test-unit bench clean

help:
	@echo "make quickstart  - run the main job on an embedded default (no servers)"
	@echo "make test        - start the real servers and run lint, types and every test"
	@echo "make test-unit   - only the tests that need no server"
	@echo "make bench       - run the benchmarks (writes docs/benchmarks.md sections by hand)"

$(STAMP): $(foreach p,$(PACKAGES),$(p)/pyproject.toml) $(NATIVE_SOURCES) $(EXAMPLE_PLUGIN)/pyproject.toml requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(foreach p,$(PACKAGES),-e $(p)) -e '$(word 5,$(PACKAGES))[embedded]' -e $(EXAMPLE_PLUGIN) -r requirements-dev.txt
	@if [ -n "$(NATIVE_PACKAGES)" ]; then \
		if command -v cargo >/dev/null; then $(BIN)/python -m pip install --quiet $(NATIVE_PACKAGES); \
		else echo "note: cargo (Rust) not found: the optional accelerators are not built; everything runs in pure Python, slower"; fi; \
	fi
	@touch $@

venv: $(STAMP)

.quickstart/hmac.key:
	@mkdir -p .quickstart
	@$(PYTHON) -c "import secrets; print(secrets.token_hex(32))" > $@
	@chmod 600 $@

quickstart: $(STAMP) .quickstart/hmac.key
	rm -rf .quickstart/clickhouse .quickstart/offsets.sqlite .quickstart/events.jsonl .quickstart/dlq
	$(BIN)/cdc plugins
	$(BIN)/cdc validate examples/quickstart/pipeline.yaml
	$(BIN)/cdc run examples/quickstart/pipeline.yaml
	@echo; echo "events written as JSON lines: $$(wc -l < .quickstart/events.jsonl) (.quickstart/events.jsonl)"
	$(BIN)/python examples/quickstart/show.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check packages tests bench examples conftest.py

typecheck: $(STAMP)
	$(BIN)/mypy $(foreach p,$(PACKAGES),$(p)/src) $(EXAMPLE_PLUGIN)/src
	$(BIN)/mypy bench
	@# Test folders one by one: each has its own conftest.py, which mypy would see as one module.
	@for d in $(foreach p,$(PACKAGES),$(p)/tests) $(wildcard $(addsuffix /tests,$(NATIVE_PACKAGES))) $(wildcard tests/*/) $(EXAMPLE_PLUGIN)/tests conftest.py; do \
		case $$d in tests/thirdparty/) continue;; esac; \
		echo "mypy $$d"; $(BIN)/mypy $$d || exit 1; done

# Each distribution alone in a fresh virtualenv: no hidden dependency on a sibling.
isolation:
	bash scripts/check_isolation.sh

services-up:
	bash scripts/services.sh up

services-down:
	bash scripts/services.sh down

# The test suite checks the compiled accelerators too (their tests fail where they are missing).
native-check:
	@command -v cargo >/dev/null || { echo "make test: cargo (Rust, e.g. from rustup) is needed to build $(NATIVE_PACKAGES)" >&2; exit 1; }

# Every test, against the real servers; a missing server fails the run (CDC_REQUIRE_SERVICES).
test: native-check $(STAMP) lint typecheck isolation services-up
	eval "$$(bash scripts/services.sh env)" && CDC_REQUIRE_SERVICES=1 $(BIN)/pytest -p no:cacheprovider -q

test-unit: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -q -m "not integration"

bench: $(STAMP) services-up
	eval "$$(bash scripts/services.sh env)" && for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .quickstart .mypy_cache .ruff_cache
