# Two set-up commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# A local mesh of three droplets running the example projects; `meshctl down --local` ends it.
demo: $(STAMP)
	$(BIN)/meshctl up --local
	$(BIN)/meshctl publish examples/projects.csv --wait
	$(BIN)/meshctl status
	$(BIN)/python examples/request.py
	@echo "The mesh keeps running. Explore: .venv/bin/meshctl status --watch | events --follow"
	@echo "Stop it and remove everything: .venv/bin/meshctl down --local"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/plan.py
	$(BIN)/python bench/converge.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
