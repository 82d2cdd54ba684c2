"""Multi-task SFT (behaviour level): tokenise prompt/completion pairs, train, build the backbone.

* :func:`train_sft`: tokenize (:mod:`align3gr_kit.model.encoding`, loss on the completion only),
  optionally wrap with LoRA, train, save the loss history.
* :func:`build_sft_model`: the backbone with the stage-03 tokenizer and SA-Init keywords.

The stages that use them are :mod:`align3gr_kit.stages.s03_sft_prompts` and
:mod:`align3gr_kit.stages.s04_sft`. Several processes: ``torchrun --nproc_per_node N -m
align3gr_kit.train.sft_main --config C`` or ``accelerate launch -m align3gr_kit.train.sft_main
--config C``; the Trainer does data parallel (gloo on CPU, NCCL on GPUs; DeepSpeed/FSDP through an
accelerate config).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from align3gr_kit.config import RunConfig
from align3gr_kit.train.artifacts import write_log_history

BPE_PROMPT_SAMPLE = 20000  # prompts used to train the tiny-llama BPE (templates repeat; more adds little)


def scid_vocabulary(item_scids, user_scids) -> list[str]:
    """Every item and user SCID token string (items first, level by level)."""
    return item_scids.vocabulary() + (user_scids.vocabulary() if user_scids is not None else [])


def tokenizer_corpus(ds, sft, seed: int, n_prompts: int = BPE_PROMPT_SAMPLE) -> list[str]:
    """Text for the tiny-llama BPE: every item text and profile plus a seeded sample of SFT rows."""
    texts = [ds.item_text(i) for i in range(ds.n_items)] + ds.users.profile.tolist()
    rng = np.random.default_rng([seed, 7])
    pick = rng.choice(len(sft), size=min(n_prompts, len(sft)), replace=False) if len(sft) else []
    sub = sft.select(np.sort(pick))
    texts += [p + c for p, c in zip(sub["prompt"], sub["completion"])]
    return texts


# ---------------------------------------------------------------------------- training
def tokenize_sft(sft, tokenizer, max_length: int):
    """``input_ids`` + ``completion_mask`` columns (the prompt/completion text columns are dropped)."""
    from align3gr_kit.model.encoding import encode_sft_batch

    return sft.map(
        lambda b: encode_sft_batch(tokenizer, b["prompt"], b["completion"], max_length),
        batched=True,
        remove_columns=sft.column_names,
        desc="tokenizing SFT data",
    )


def trl_config(cfg: RunConfig, out_dir: str | Path):
    """trl ``SFTConfig`` from the run config: fp32 on CPU, bf16 on GPUs that support it."""
    import torch
    from trl import SFTConfig as TrlSFTConfig

    from align3gr_kit.model.backbone import resolve_dtype

    s = cfg.sft
    bf16 = resolve_dtype(cfg.model.dtype) == torch.bfloat16 and torch.cuda.is_available()
    return TrlSFTConfig(
        output_dir=str(Path(out_dir) / "trainer"),
        num_train_epochs=s.epochs,
        max_steps=s.max_steps if s.max_steps > 0 else -1,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        logging_steps=s.logging_steps,
        save_strategy="no",
        report_to="none",
        bf16=bf16,
        fp16=False,
        activation_checkpointing=False,  # trl defaults to on; tiny models and CPU runs gain nothing
        completion_only_loss=True,
        max_length=None,  # sequences are already cut by encode_sft_batch (oldest prompt tokens first)
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )


def train_sft(cfg: RunConfig, model, tokenizer, train_ds, out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune ``model`` on the prompt/completion dataset ``train_ds`` (loss on completions).

    Args:
        cfg: ``sft`` (steps, lr, batch...), ``model`` (``lora``, ``dtype``) and ``seed`` are used.
        model: a causal LM holding the SCID tokens; wrapped with LoRA here when ``cfg.model.lora``.
        tokenizer: its tokenizer.
        train_ds: ``datasets.Dataset`` with ``prompt`` and ``completion`` columns.
        out_dir: where ``log_history.json`` (and the trainer's scratch folder) go.
    Returns:
        ``{"model": trained model (PEFT-wrapped when LoRA), "trainable": {...}, "train_loss",
        "first_loss", "last_loss", "steps", "world_size", "seconds", "log_history": [...], "trainer"}``.
    """
    from trl import SFTTrainer

    from align3gr_kit.model.lora import apply_lora, trainable_parameters

    out_dir = Path(out_dir)
    if cfg.model.lora and not hasattr(model, "peft_config"):
        model = apply_lora(model, cfg.model)
    trainable = trainable_parameters(model)
    if not embeddings_trainable(model):
        raise RuntimeError("the SCID token rows are frozen (input embedding or output layer); with LoRA they must be "
                           "in modules_to_save (align3gr_kit.model.lora.apply_lora does this)")
    print(f"trainable parameters: {trainable['trainable']:,} of {trainable['total']:,} "
          f"({100 * trainable['share']:.2f}%); embeddings and output layer trainable: yes")
    tokenized = tokenize_sft(train_ds, tokenizer, cfg.sft.max_length)
    trainer = SFTTrainer(model=model, args=trl_config(cfg, out_dir), train_dataset=tokenized, processing_class=tokenizer)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    _remove_fused_head(trainer.model)
    if trainer.is_world_process_zero():
        write_log_history(out_dir, history)
    return {
        "model": trainer.model,
        "trainable": trainable,
        "train_loss": float(result.training_loss),
        "first_loss": float(losses[0]) if losses else float("nan"),
        "last_loss": float(losses[-1]) if losses else float("nan"),
        "steps": int(trainer.state.global_step),
        "world_size": int(trainer.args.world_size),
        "seconds": round(seconds, 2),
        "log_history": history,
        "trainer": trainer,
    }


def _remove_fused_head(model) -> None:
    """Undo trl's fused-LM-head patch (an instance-level ``forward`` whose closure holds the original
    bound method): left in place, a ``copy.deepcopy`` of the trained model (e.g. a DPO reference)
    would keep running the *original* module's forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "forward" in vars(base):
        del base.forward


def embeddings_trainable(model) -> bool:
    """Whether the input embedding and the output layer (SCID rows included) receive gradients.

    Under peft, ``get_input_embeddings()`` returns the ``modules_to_save`` wrapper, whose trainable
    copy is what trains; a plain LoRA model would fail this check (the known pitfall).
    """
    mods = [model.get_input_embeddings(), model.get_output_embeddings()]
    return all(any(p.requires_grad for p in m.parameters()) for m in mods if m is not None)


def build_sft_model(cfg: RunConfig, ds, item_scids, user_scids, tokenizer):
    """The backbone for SFT with the stage-03 tokenizer and SA-Init keywords when enabled."""
    from align3gr_kit.model.backbone import build_backbone
    from align3gr_kit.model.sa_init import scid_keywords

    keywords = scid_keywords(ds, item_scids, user_scids, cfg.model.sa_init_keywords) if cfg.model.sa_init else None
    return build_backbone(cfg.model, [], scid_vocabulary(item_scids, user_scids), cfg.seed, tokenizer=tokenizer,
                          keywords=keywords)
