"""Training entry points of the behaviour level (multi-task SFT).

    train_sft(cfg, model, tokenizer, train_ds, out_dir) -> dict
    build_sft_model(cfg, ds, item_scids, user_scids, tokenizer) -> (model, tokenizer)

The stages are :mod:`align3gr_kit.stages.s03_sft_prompts` and :mod:`align3gr_kit.stages.s04_sft`.
Multi-process: ``torchrun --nproc_per_node 2 -m align3gr_kit.train.sft_main --config configs/smoke.yaml``.
"""

from align3gr_kit.train.sft import (
    build_sft_model,
    embeddings_trainable,
    scid_vocabulary,
    tokenize_sft,
    tokenizer_corpus,
    train_sft,
)

__all__ = ["build_sft_model", "embeddings_trainable", "scid_vocabulary", "tokenize_sft", "tokenizer_corpus",
           "train_sft"]
