"""LoRA through peft, with the SCID token rows trainable in both roles, and a trainable-parameter report.

The known pitfall: a plain ``LoraConfig`` freezes the embedding and output matrices, so the new
SCID tokens keep their initial rows and the model cannot learn them. Here peft's
``trainable_token_indices`` makes exactly the SCID rows trainable (a small delta per row, added to
the frozen matrix), for every backbone:

* tied input/output matrices (SmolLM2, BERT/MiniLM, small Qwen models): the input embedding is
  named once and peft wraps the tied output layer with the *same* token adapter (found through the
  model's ``_tied_weights_keys``), so each SCID row trains in its input and its output role at once
  and the tie survives ``merge_and_unload``;
* untied matrices (``tiny-llama``, Llama): both are named, each with the SCID ids.

Why this and not ``modules_to_save=["embed_tokens", "lm_head"]``: full copies train every old
vocabulary row as well (57 M parameters for SmolLM2 instead of the SCID rows; AdamW's weight decay
moves even rows whose gradient is zero) and break the tie. The price: trl's ``SFTTrainer`` crashes
on the wrapped output layer (its fused LM head reads ``lm_head.weight``/``bias`` directly;
LIBRARY-NOTES), so SFT runs on ``transformers.Trainer`` (:mod:`align3gr_kit.train.sft`).

The module names come from ``get_input_embeddings()`` / ``get_output_embeddings()``, so Llama's
``embed_tokens``/``lm_head`` and BERT's ``word_embeddings``/``decoder`` both work.
"""

from __future__ import annotations

import warnings
from typing import Sequence

from torch import nn

from align3gr_kit.config import ModelConfig

SCID_IDS_KEY = "align3gr_scid_token_ids"  # model.config attribute written by build_backbone


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
    """Whether the output layer's weight is the input embedding's tensor."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def scid_token_ids(model: nn.Module) -> list[int]:
    """The SCID token ids :func:`align3gr_kit.model.backbone.build_backbone` recorded in ``model.config``
    (saved with the model, so a loaded SFT model knows them for DPO's adapters)."""
    ids = getattr(model.config, SCID_IDS_KEY, None)
    if not ids:
        raise ValueError(f"model.config has no {SCID_IDS_KEY}: build the model with build_backbone (or load one "
                         "save_model wrote), or pass new_ids to apply_lora")
    return [int(i) for i in ids]


def apply_lora(model: nn.Module, cfg: ModelConfig, new_ids: Sequence[int] | None = None,
               dropout: float | None = None):
    """Wrap ``model`` with LoRA adapters (``cfg.lora_r``, ``lora_alpha``, ``lora_dropout``,
    ``lora_target_modules``) and trainable SCID rows (module docstring). Returns the PEFT model.

    Args:
        model: a causal LM holding the SCID tokens.
        cfg: the LoRA settings.
        new_ids: the SCID token ids whose rows train; ``None`` = those recorded in ``model.config``
            (:func:`scid_token_ids`).
        dropout: the LoRA branch's dropout instead of ``cfg.lora_dropout``; DPO passes 0, since it
            compares the policy's log-probs with the reference's, which are scored without dropout.
    """
    from peft import LoraConfig, get_peft_model

    ids = sorted(set(int(i) for i in (scid_token_ids(model) if new_ids is None else new_ids)))
    target = cfg.lora_target_modules
    target_modules = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
    names = embedding_module_names(model)
    tied = tied_embeddings(model)
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout if dropout is None else float(dropout),
        target_modules=target_modules,
        trainable_token_indices={name: ids for name in (names[:1] if tied else names)},
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
        # since transformers 5, shown in red in every LoRA notebook and report); nothing of ours calls it
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lcfg)


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
