#!/usr/bin/env bash
# All visible GPUs: the run of bench/gpu_ml100k.sh (same install, config and printout) with stages
# 04-06 under `accelerate launch`, one process per GPU (configs/accelerate/ddp.yaml, or for SFT
# ACCELERATE_CONFIG=configs/accelerate/deepspeed-zero2.yaml after `pip install deepspeed`; the DPO
# stages always launch under DDP: DeepSpeed's bf16 mode holds the weights in bf16, and the kit refuses
# to merge a DPO delta into them).
# Stages 00-03 are built first in one plain process (a launch never builds upstream stages), and a
# last plain `run --resume` makes stage 07 and the reports.
#
#   bash bench/gpu_multi.sh                   # NPROC: all GPUs nvidia-smi lists
#   NPROC=4 bash bench/gpu_multi.sh
#
# Same environment variables as bench/gpu_ml100k.sh, plus NPROC and ACCELERATE_CONFIG. The global
# batch is sft.batch_size x NPROC (and dpo.batch_size x NPROC): an epoch takes 1/NPROC of the steps.
set -euo pipefail
# shellcheck source=bench/gpu_ml100k.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_ml100k.sh"

ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}
DPO_ACCELERATE_CONFIG=configs/accelerate/ddp.yaml

t0=$SECONDS
check_gpu
NPROC=${NPROC:-$(nvidia-smi -L | grep -c '^GPU ')}
(( NPROC >= 2 )) || die "NPROC=$NPROC: several GPUs are needed here; on one GPU run bench/gpu_ml100k.sh"
setup_env
ensure_data
name_args
resume=()
if [[ "${RESUME:-0}" == 1 ]]; then resume=(--resume); fi
"$PY" -m align3gr_kit run --config "$CONFIG" "${NAME_ARGS[@]}" "${resume[@]}" --stages 00,01,02,03
launch=("$PY" -m accelerate.commands.launch --num_processes "$NPROC" --config_file)
"${launch[@]}" "$ACCELERATE_CONFIG" -m align3gr_kit train sft --config "$CONFIG" "${NAME_ARGS[@]}"
"${launch[@]}" "$DPO_ACCELERATE_CONFIG" -m align3gr_kit train dpo --stage sp --config "$CONFIG" "${NAME_ARGS[@]}"
"${launch[@]}" "$DPO_ACCELERATE_CONFIG" -m align3gr_kit train dpo --stage rf --config "$CONFIG" "${NAME_ARGS[@]}"
"$PY" -m align3gr_kit run --config "$CONFIG" "${NAME_ARGS[@]}" --resume
print_results "$((SECONDS - t0))"
