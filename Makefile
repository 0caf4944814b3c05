# alliance-risk: every target installs what it needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install is redone when the project's metadata changes. Everything installs from wheels:
# no compiler is needed.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
DEMO_DIR ?= data/demo
PORT ?= 8000

# Serving and benchmarks share 2 cores: one OpenMP thread per process (perf-notes: 10x trap).
export OMP_NUM_THREADS ?= 1

.PHONY: help venv run test lint typecheck imports compose unit bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## Create .venv and install the project with its dev tools

run: venv ## Serve the risk API on 127.0.0.1:$(PORT) (dev tokens); trains a demo model first if there is none
	$(BIN)/alliance-risk serve --host 127.0.0.1 --port $(PORT) --dev-auth

lint: venv ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv ## mypy on features/, models/ and service/
	$(BIN)/mypy

imports: venv ## import-linter layer contract
	$(BIN)/lint-imports

# Placeholder secrets: `config` checks the file, it starts nothing. docker-compose comes from
# Debian (no Docker engine is needed, or installed, to validate).
compose: ## Validate docker-compose.yml with docker-compose config (installs Debian's docker-compose)
	@bash scripts/ensure-tool.sh docker-compose
	POSTGRES_PASSWORD=placeholder ALLIANCE_RISK_AUTH_MODE=api_key ALLIANCE_RISK_AUDIT_KEY=placeholder \
		docker-compose -f docker-compose.yml config -q

unit: venv ## pytest only; "no tests collected" (exit 5) fails loudly rather than passing
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as failure" >&2; fi; exit $$rc

test: lint typecheck imports compose unit ## The full suite: lint, types, layers, compose file, tests

bench: venv ## Performance benchmarks (ratios against baselines measured in the same run)
	$(BIN)/python -m benchmarks

clean: ## Remove the venv, caches and demo data
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(DEMO_DIR)
