# Two entry points: `make demo` (the embedded default) and `make test` (everything CI checks).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
LINTED := src plugins tests benchmarks examples docs/hooks.py
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint docs serve-docs bench clean

# Installs re-run only when pyproject.toml changes.
$(BIN)/.installed-demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[valley]"
	touch $@

$(BIN)/.installed-dev: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(BIN)/.installed-demo

demo: $(BIN)/.installed-demo
	$(BIN)/omnimm plugins
	$(BIN)/omnimm demo valley

test: lint
	$(BIN)/python -m pytest
	$(MKDOCS) build --strict --quiet

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

docs: $(BIN)/.installed-dev
	$(MKDOCS) build --strict

serve-docs: $(BIN)/.installed-dev
	$(MKDOCS) serve

bench: $(BIN)/.installed-dev
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) site build .pytest_cache .ruff_cache .hypothesis
