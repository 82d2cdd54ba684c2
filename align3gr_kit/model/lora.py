"""LoRA through peft, with the SCID token rows trainable, and a trainable-parameter report.

The known pitfall: a plain ``LoraConfig`` freezes the embedding and output matrices, so the new
SCID tokens keep their initial rows and the model cannot learn them. Here the input embedding and
the output layer go into ``modules_to_save`` (trainable full copies; with trl 1.16 the lighter
``trainable_token_indices`` on the output layer crashes, see LIBRARY-NOTES). Their module names
are found from ``get_input_embeddings()`` / ``get_output_embeddings()``, so Llama's
``embed_tokens``/``lm_head`` and BERT's ``word_embeddings``/``decoder`` both work; tied matrices
stay tied (see :func:`apply_lora`).
"""

from __future__ import annotations

from torch import nn

from align3gr_kit.config import ModelConfig


def _leaf_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"module {type(module).__name__} not found in the model")


def embedding_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the input embedding and (when distinct) the output layer, e.g. ``["embed_tokens", "lm_head"]``."""
    names = [_leaf_name(model, model.get_input_embeddings())]
    out = model.get_output_embeddings()
    if out is not None:
        names.append(_leaf_name(model, out))
    return list(dict.fromkeys(names))


def tied_embeddings(model: nn.Module) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def apply_lora(model: nn.Module, cfg: ModelConfig):
    """Wrap ``model`` with LoRA adapters (``cfg.lora_r``, ``lora_alpha``, ``lora_dropout``,
    ``lora_target_modules``) and fully trainable embedding/output matrices. Returns the PEFT model.

    Tied matrices (BERT, small Qwen models): only the input embedding is copied into
    ``modules_to_save`` and the output layer is pointed at that trainable copy, because peft's own
    ``ensure_weight_tying`` only recognises the names ``embed_tokens``/``lm_head``. The tie then
    survives ``merge_and_unload`` and saving.
    """
    from peft import LoraConfig, get_peft_model

    target = cfg.lora_target_modules
    target_modules = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
    tied = tied_embeddings(model)
    names = embedding_module_names(model)
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules,
        modules_to_save=names[:1] if tied else names,
        task_type="CAUSAL_LM",
        ensure_weight_tying=tied and names[0] == "embed_tokens",
    )
    peft_model = get_peft_model(model, lcfg)
    if tied:
        trained = peft_model.get_input_embeddings().modules_to_save[peft_model.active_adapter].weight
        out = peft_model.get_output_embeddings()
        out_module = out.modules_to_save[peft_model.active_adapter] if hasattr(out, "modules_to_save") else out
        if out_module.weight is not trained:
            out_module.weight = trained
    return peft_model


def trainable_parameters(model: nn.Module) -> dict[str, int | float]:
    """``{"trainable": n, "total": n, "share": trainable/total}`` over unique parameters."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"trainable": trainable, "total": total, "share": round(trainable / max(total, 1), 6)}
