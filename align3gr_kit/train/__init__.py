"""Training entry points of the behaviour level (multi-task SFT).

    prepare_sft_data(cfg, out_dir) -> dict          stage 03: SFT dataset + tokenizer, saved
    train_sft(cfg, model, tokenizer, train_ds, out_dir) -> dict
    run_train_sft(cfg) -> dict                       stage 04 end to end (also under torchrun/accelerate)

Multi-process: ``torchrun --nproc_per_node 2 -m align3gr_kit.train.sft_main --config configs/smoke.yaml``.
"""

from align3gr_kit.train.sft import (
    build_sft_model,
    embeddings_trainable,
    load_sft_data,
    load_stage_inputs,
    prepare_sft_data,
    read_log_history,
    run_train_sft,
    scid_vocabulary,
    tokenize_sft,
    train_sft,
)

__all__ = [
    "build_sft_model",
    "embeddings_trainable",
    "load_sft_data",
    "load_stage_inputs",
    "prepare_sft_data",
    "read_log_history",
    "run_train_sft",
    "scid_vocabulary",
    "tokenize_sft",
    "train_sft",
]
