"""The LLM backbone with SCID tokens: build (tiny-llama / minilm / hub model), SA-Init, LoRA, save/load.

Public API::

    build_tokenizer(model_cfg, corpus_texts, scid_tokens) -> tokenizer
    build_backbone(model_cfg, corpus_texts, scid_tokens, seed, tokenizer=None, keywords=None) -> (model, tokenizer)
    scid_keywords(ds, item_scids, user_scids, k) -> {token: keywords}    (SA-Init input)
    sa_init(model, tokenizer, keywords, new_ids), normal_init(model, new_ids, seed)
    apply_lora(model, model_cfg) -> PeftModel; trainable_parameters(model) -> dict
    save_model(model, tokenizer, folder, item_scids, user_scids); load_model(folder) -> (model, tok, items, users)
    encode_prompts / prompt_encoder / encode_sft_batch / left_pad        (one prompt encoding everywhere)
"""

from align3gr_kit.model.backbone import (
    add_scid_tokens,
    build_backbone,
    build_tokenizer,
    load_model,
    minilm_path,
    resolve_dtype,
    save_model,
)
from align3gr_kit.model.encoding import bos_ids, encode_prompts, encode_sft_batch, left_pad, prompt_encoder
from align3gr_kit.model.lora import apply_lora, embedding_module_names, trainable_parameters
from align3gr_kit.model.sa_init import normal_init, sa_init, scid_keywords

__all__ = [
    "add_scid_tokens",
    "apply_lora",
    "bos_ids",
    "build_backbone",
    "build_tokenizer",
    "embedding_module_names",
    "encode_prompts",
    "encode_sft_batch",
    "left_pad",
    "load_model",
    "minilm_path",
    "normal_init",
    "prompt_encoder",
    "resolve_dtype",
    "sa_init",
    "save_model",
    "scid_keywords",
    "trainable_parameters",
]
