# The two commands of the README: `make demo` and `make test`. Both set everything up first
# and are quick the second time (stamps depend on pyproject.toml).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_WS ?= .demo-workspace

.PHONY: setup system venv demo test lint typecheck unit bench clean-demo

setup: system venv

system:
	@bash tools/setup-system.sh

venv: $(VENV)/.stamp-install

$(VENV)/.stamp-install: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "setup: installing Converge and its dependencies into $(VENV) (llama-cpp-python builds from source once, ~8 min)" >&2
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	@bash tools/demo.sh $(DEMO_WS)

lint: venv
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/ruff format --check orchestrator tests bench
	$(BIN)/lint-imports
	@if grep -rnE '^(<<<<<<<|>>>>>>>) ' orchestrator tests bench tools agents policies; then echo "merge conflict markers (above)"; exit 1; fi
	@big=$$(find orchestrator -name '*.py' -exec wc -l {} + | awk '$$2 != "total" && $$1 > 400'); \
	  if [ -n "$$big" ]; then echo "modules over 400 lines (split them along a seam):"; echo "$$big"; exit 1; fi

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest

test: setup lint typecheck unit

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-demo:
	rm -rf $(DEMO_WS)
