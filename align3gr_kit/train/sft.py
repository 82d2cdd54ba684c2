"""Multi-task SFT with ``transformers.Trainer`` (behaviour level), and the two stage functions.

* :func:`prepare_sft_data` (stage ``03_sft_prompts``): the SFT dataset and the backbone's tokenizer
  (``tiny-llama``: BPE trained on the run's text), saved into the stage folder.
* :func:`train_sft`: tokenize (:mod:`align3gr_kit.model.encoding`, loss on the completion only),
  optionally wrap with LoRA, train, save the loss history.
* :func:`run_train_sft` (stage ``04_sft``): load the upstream artifacts (stage 03 is rebuilt when it
  is missing or its manifest fingerprint does not match the config), build the backbone, train,
  save ``04_sft/model`` (LoRA merged), evaluate on valid and test.

Several processes: ``torchrun --nproc_per_node N -m align3gr_kit.train.sft_main --config C`` or
``accelerate launch -m align3gr_kit.train.sft_main --config C``; the Trainer does data parallel
(gloo on CPU, NCCL on GPUs; DeepSpeed/FSDP through an accelerate config). Rank 0 builds the stage
03 artifacts if missing while the others wait, then every rank loads the same files, so all ranks
share one tokenizer; rank 0 alone saves, evaluates and writes the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from align3gr_kit.config import RunConfig
from align3gr_kit.utils import read_json, write_json

IGNORE_INDEX = -100  # label of tokens without loss (transformers' causal-LM loss ignores it)

SFT_DATASET = "sft_dataset"
TOKENIZER = "tokenizer"
BPE_PROMPT_SAMPLE = 20000  # prompts used to train the tiny-llama BPE (templates repeat; more adds little)
# Smoke runs (RunConfig.smoke) cap the data and steps so the notebooks run in seconds; the config's
# own values are used when they are smaller.
SMOKE_CAPS = {"prompts.max_per_task": 300, "sft.max_steps": 40}


def effective_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with :data:`SMOKE_CAPS` applied when ``cfg.smoke`` (unchanged otherwise)."""
    if not cfg.smoke:
        return cfg
    d = cfg.to_dict()
    out = {}
    for key, cap in SMOKE_CAPS.items():
        section, name = key.split(".")
        value = d[section][name]
        out[key] = cap if value <= 0 else min(value, cap)
    return cfg.override(out)


# ---------------------------------------------------------------------------- stage 03
def load_stage_inputs(cfg: RunConfig):
    """``(dataset, split, item_scids, user_scids | None)`` from ``00_data`` and ``01_tokenize`` of the run."""
    from align3gr_kit.data.schema import RecDataset
    from align3gr_kit.data.split import Split
    from align3gr_kit.scid import ScidTable

    data_dir = _stage_dir(cfg, "00_data")
    tok_dir = _stage_dir(cfg, "01_tokenize")
    ds = RecDataset.load(data_dir / "dataset")
    split = Split.load(data_dir / "split")
    item_scids = ScidTable.load(tok_dir / "item_scids.json")
    user_path = tok_dir / "user_scids.json"
    user_scids = ScidTable.load(user_path) if user_path.exists() else None
    return ds, split, item_scids, user_scids


def _stage_dir(cfg: RunConfig, name: str) -> Path:
    from align3gr_kit.runs import get_stage

    folder = cfg.run_dir / get_stage(name).name
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(
            f"{folder}: stage {name} has not finished for run {cfg.run_name!r}; run it first: "
            f"python -m align3gr_kit run --config <your config> --stages {name.split('_')[0]}"
        )
    return folder


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


def prepare_sft_data(cfg: RunConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Build and save stage 03: the SFT dataset (``sft_dataset/``) and the tokenizer (``tokenizer/``).

    Returns:
        ``{"sft": Dataset, "tokenizer": tokenizer, "dataset", "split", "item_scids", "user_scids",
        "leaks": [...], "metrics": {...}}``.
    """
    from align3gr_kit.model.backbone import build_tokenizer
    from align3gr_kit.prompts import build_sft_dataset, find_leaks, task_counts

    out_dir = Path(out_dir)
    cfg = effective_config(cfg)
    ds, split, item_scids, user_scids = load_stage_inputs(cfg)
    t0 = time.time()
    sft = build_sft_dataset(ds, split, item_scids, user_scids, cfg.prompts, cfg.seed, progress=progress)
    leaks = find_leaks(sft, split, item_scids)
    if leaks:
        raise RuntimeError("SFT data leaks validation/test events:\n" + "\n".join(leaks))
    tokenizer = build_tokenizer(cfg.model, tokenizer_corpus(ds, sft, cfg.seed), scid_vocabulary(item_scids, user_scids))
    _save_folder(lambda tmp: sft.save_to_disk(str(tmp)), out_dir / SFT_DATASET)
    _save_folder(lambda tmp: tokenizer.save_pretrained(str(tmp)), out_dir / TOKENIZER)
    counts = task_counts(sft)
    metrics = {"examples": len(sft), "leaks": 0, "vocab": len(tokenizer), "seconds": round(time.time() - t0, 2),
               **{f"examples_{t}": int(n) for t, n in zip(counts.task, counts.examples)}}
    return {"sft": sft, "tokenizer": tokenizer, "dataset": ds, "split": split, "item_scids": item_scids,
            "user_scids": user_scids, "leaks": leaks, "metrics": metrics}


def _save_folder(write, target: Path) -> None:
    """Write a folder beside ``target`` then swap it in, so a crash never leaves half a folder."""
    import shutil

    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def stage03_current(cfg: RunConfig) -> bool:
    """Whether ``03_sft_prompts`` finished for exactly this config and these upstream stages."""
    from align3gr_kit.runs import fingerprint, get_stage, read_manifest

    m = read_manifest(cfg, "03_sft_prompts")
    return bool(m) and m.get("fingerprint") == fingerprint(cfg, get_stage("03_sft_prompts")) and \
        (cfg.run_dir / "03_sft_prompts" / SFT_DATASET).exists()


def load_sft_data(folder: str | Path):
    """``(sft dataset, tokenizer)`` saved by :func:`prepare_sft_data` in ``folder``."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    folder = Path(folder)
    return load_from_disk(str(folder / SFT_DATASET)), AutoTokenizer.from_pretrained(str(folder / TOKENIZER))


# ---------------------------------------------------------------------------- training
def tokenize_sft(sft, tokenizer, max_length: int):
    """``input_ids``, ``completion_mask`` and ``length`` columns (the prompt/completion text columns are dropped)."""
    from align3gr_kit.model.encoding import encode_sft_batch

    def encode(b):
        out = encode_sft_batch(tokenizer, b["prompt"], b["completion"], max_length)
        return {**out, "length": [len(x) for x in out["input_ids"]]}

    return sft.map(
        encode,
        batched=True,
        remove_columns=sft.column_names,
        desc="tokenizing SFT data",
    )


@dataclass
class CompletionCollator:
    """Left-pad tokenized SFT rows into a batch whose loss falls on the completion only.

    Each row holds ``input_ids`` and ``completion_mask`` (:func:`tokenize_sft`). Returns
    ``input_ids`` ``[B, T]`` (left-padded with ``pad_id``), ``attention_mask`` ``[B, T]`` (0 on
    padding), ``position_ids`` ``[B, T]`` (counting from each row's first real token, so padding
    shifts nothing) and ``labels``: the input id on completion tokens, -100 on prompt tokens and
    padding (the model's causal-LM loss shifts them and ignores -100; the Trainer's
    ``num_items_in_batch`` keeps the mean per completion token under gradient accumulation).

    With ``logits_to_keep`` (models whose forward takes it, e.g. Llama): left padding puts every
    completion at the end, so only the last ``K = longest completion + 1`` positions need logits
    (the +1: the last prompt token predicts the first completion token). The batch then carries
    ``logits_to_keep = K`` and ``labels`` ``[B, K]`` (the same window); the LM head and the
    vocabulary-wide softmax run on ``K`` positions instead of ``T``. For SmolLM2 (vocabulary 49k)
    that is a large share of the step.

    Written by hand because trl's collator comes with ``SFTTrainer``, which cannot train the SCID
    rows of tied backbones (see :mod:`align3gr_kit.model.lora`); the rule is a few lines.
    """

    pad_id: int
    logits_to_keep: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor | int]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), int(self.pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        keep = 1
        for r, row in enumerate(rows):
            x = torch.as_tensor(row["input_ids"], dtype=torch.long)
            comp = torch.as_tensor(row["completion_mask"], dtype=torch.bool)
            ids[r, width - len(x):] = x
            mask[r, width - len(x):] = 1
            labels[r, width - len(x):] = x.masked_fill(~comp, IGNORE_INDEX)
            first = int(comp.nonzero()[0]) if bool(comp.any()) else len(x)
            keep = max(keep, len(x) - first + 1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        batch: dict[str, torch.Tensor | int] = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}
        if self.logits_to_keep:
            keep = min(keep, width)
            batch["labels"], batch["logits_to_keep"] = labels[:, width - keep:], keep
        else:
            batch["labels"] = labels
        return batch


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of the padded batch tensors that is padding when ``order`` is cut into batches of ``batch_size``.

    ``1 - sum(lengths) / sum(batch size x longest row)`` over the batches, e.g. lengths ``[2, 4]`` in
    one batch: ``1 - 6 / 8 = 0.25``.
    """
    lengths = np.asarray(lengths)[np.asarray(order, dtype=np.int64)]
    if not len(lengths):
        return 0.0
    padded = sum(int(chunk.max()) * len(chunk) for chunk in np.split(lengths, range(batch_size, len(lengths), batch_size)))
    return float(1.0 - lengths.sum() / padded)


def length_grouping_report(lengths: Sequence[int], batch_size: int, group_size: int, seed: int) -> dict[str, float]:
    """Padding fraction of a random order (before) and of transformers' length-grouped order (after).

    ``group_size`` is the Trainer's grouping unit (``batch_size x grad_accum``); both orders are
    seeded. Returns ``{"padding_random": f, "padding_grouped": f}``.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    gen = torch.Generator().manual_seed(int(seed))
    random_order = torch.randperm(len(lengths), generator=gen).tolist()
    grouped = get_length_grouped_indices(list(lengths), group_size, generator=torch.Generator().manual_seed(int(seed)))
    return {"padding_random": round(padding_fraction(lengths, random_order, batch_size), 4),
            "padding_grouped": round(padding_fraction(lengths, grouped, batch_size), 4)}


def training_args(cfg: RunConfig, out_dir: str | Path):
    """``transformers.TrainingArguments`` from the run config.

    Precision from ``model.dtype`` (:func:`align3gr_kit.model.precision.trainer_bf16`): ``bf16=True``
    is accelerate's bf16 autocast, on a GPU and on CPUs with AMX/AVX512-BF16 alike (fp32 master
    weights). Batches are length-grouped (``train_sampling_strategy="group_by_length"`` over the
    ``length`` column): rows of similar length share a batch, so little of the compute is padding.
    """
    import torch
    from transformers import TrainingArguments

    from align3gr_kit.model.precision import trainer_bf16

    s = cfg.sft
    return TrainingArguments(
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
        bf16=trainer_bf16(cfg.model.dtype),
        fp16=False,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,  # the collator needs completion_mask, which forward() does not take
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )


def train_sft(cfg: RunConfig, model, tokenizer, train_ds, out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune ``model`` on the prompt/completion dataset ``train_ds`` (loss on completions).

    One path for every backbone: ``transformers.Trainer`` with :class:`CompletionCollator` over
    :func:`tokenize_sft`'s ids, length-grouped batches, precision from ``model.dtype``.

    Args:
        cfg: ``sft`` (steps, lr, batch...), ``model`` (``lora``, ``dtype``) and ``seed`` are used.
        model: a causal LM holding the SCID tokens (built by
            :func:`align3gr_kit.model.backbone.build_backbone`, which records their ids); wrapped
            with LoRA here when ``cfg.model.lora``.
        tokenizer: its tokenizer.
        train_ds: ``datasets.Dataset`` with ``prompt`` and ``completion`` columns.
        out_dir: where ``log_history.json`` (and the trainer's scratch folder) go.
    Returns:
        ``{"model": trained model (PEFT-wrapped when LoRA), "trainable": {...}, "train_loss",
        "first_loss", "last_loss", "steps", "world_size", "seconds", "padding": {...}, "bf16",
        "log_history": [...], "trainer"}``.
    """
    from transformers import Trainer

    from align3gr_kit.model.lora import apply_lora, trainable_parameters

    out_dir = Path(out_dir)
    cfg = effective_config(cfg)
    if cfg.model.lora and not hasattr(model, "peft_config"):
        model = apply_lora(model, cfg.model)
    trainable = trainable_parameters(model)
    if not embeddings_trainable(model):
        raise RuntimeError("the SCID token rows are frozen (input embedding or output layer); with LoRA they must be "
                           "trainable tokens (align3gr_kit.model.lora.apply_lora does this)")
    print(f"trainable parameters: {trainable['trainable']:,} of {trainable['total']:,} "
          f"({100 * trainable['share']:.2f}%); embeddings and output layer trainable: yes")
    tokenized = tokenize_sft(train_ds, tokenizer, cfg.sft.max_length)
    args = training_args(cfg, out_dir)
    padding = length_grouping_report(tokenized["length"], cfg.sft.batch_size, cfg.sft.batch_size * cfg.sft.grad_accum,
                                     cfg.seed)
    print(f"padding share of SFT batches: {padding['padding_random']:.1%} in random order, "
          f"{padding['padding_grouped']:.1%} length-grouped; bf16 autocast: {'on' if args.bf16 else 'off'}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = CompletionCollator(int(pad_id), logits_to_keep=_accepts(model, "logits_to_keep"))
    trainer = Trainer(model=model, args=args, train_dataset=tokenized, data_collator=collator, processing_class=tokenizer)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    if trainer.is_world_process_zero():
        write_json(out_dir / "log_history.json", history)
    return {
        "model": trainer.model,
        "trainable": trainable,
        "train_loss": float(result.training_loss),
        "first_loss": float(losses[0]) if losses else float("nan"),
        "last_loss": float(losses[-1]) if losses else float("nan"),
        "steps": int(trainer.state.global_step),
        "world_size": int(trainer.args.world_size),
        "seconds": round(seconds, 2),
        "padding": padding,
        "bf16": bool(args.bf16),
        "log_history": history,
        "trainer": trainer,
    }


def _accepts(model, name: str) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward takes keyword ``name``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def embeddings_trainable(model) -> bool:
    """Whether the input embedding and the output layer (SCID rows included) receive gradients.

    Under peft, ``get_input_embeddings()``/``get_output_embeddings()`` return the trainable-token
    wrappers, whose SCID-row deltas are what trains; a plain LoRA model would fail this check (the
    known pitfall).
    """
    mods = [model.get_input_embeddings(), model.get_output_embeddings()]
    return all(any(p.requires_grad for p in m.parameters()) for m in mods if m is not None)


# ---------------------------------------------------------------------------- stage 04
def build_sft_model(cfg: RunConfig, ds, item_scids, user_scids, tokenizer):
    """The backbone for SFT with the stage-03 tokenizer and SA-Init keywords when enabled."""
    from align3gr_kit.model.backbone import build_backbone
    from align3gr_kit.model.sa_init import scid_keywords

    keywords = scid_keywords(ds, item_scids, user_scids, cfg.model.sa_init_keywords) if cfg.model.sa_init else None
    return build_backbone(cfg.model, [], scid_vocabulary(item_scids, user_scids), cfg.seed, tokenizer=tokenizer,
                          keywords=keywords)


def run_train_sft(cfg: RunConfig, stage_run=None, evaluate_splits: tuple[str, ...] = ("valid", "test"),
                  progress: bool = True) -> dict[str, Any]:
    """Stage 04 end to end: inputs from ``00_data``/``01_tokenize``/``03_sft_prompts`` (stage 03 is built
    here when missing), backbone, SFT, ``04_sft/model``, Recall/NDCG on ``evaluate_splits``.

    Works in one process or under ``torchrun``/``accelerate launch`` (see the module docstring).

    Args:
        cfg: the run config.
        stage_run: the notebook's ``StageRun("04_sft")``; the notebook then writes the manifest itself.
            ``None`` (CLI, scripts): the manifest is written here, by rank 0.
        evaluate_splits: splits decoded after training (``()`` = none).
        progress: progress bars of the beam search.
    Returns:
        On rank 0: ``{"train": {...}, "valid": {...}, "test": {...}, "model_dir": str, "metrics": flat dict
        (the manifest's metrics: ``train_*``, ``valid_recall@10``...)}``; other ranks: ``{"train": {...}}``.
    """
    from align3gr_kit.evaluate import evaluate
    from align3gr_kit.model.backbone import save_model
    from align3gr_kit.runs import StageRun
    from align3gr_kit.utils import process_state, seed_everything

    cfg = effective_config(cfg)
    state = process_state()
    seed_everything(cfg.seed)
    prompts_dir = cfg.run_dir / "03_sft_prompts"
    with state.main_process_first():
        if state.is_main_process and not stage03_current(cfg):
            prep = prepare_sft_data(cfg, prompts_dir, progress=progress)
            StageRun(cfg, "03_sft_prompts").finish(prep["metrics"])
    sft, tokenizer = load_sft_data(prompts_dir)
    ds, split, item_scids, user_scids = load_stage_inputs(cfg)
    own = stage_run if stage_run is not None else (StageRun(cfg, "04_sft") if state.is_main_process else None)
    out_dir = cfg.run_dir / "04_sft"
    model, tokenizer = build_sft_model(cfg, ds, item_scids, user_scids, tokenizer)
    res = train_sft(cfg, model, tokenizer, sft, out_dir)
    train_summary = {k: res[k] for k in ("train_loss", "first_loss", "last_loss", "steps", "world_size", "seconds")}
    train_summary["trainable"] = res["trainable"]["trainable"]
    state.wait_for_everyone()
    if not state.is_main_process:
        return {"train": train_summary}
    model = _unwrap(res["model"])
    model_dir = save_model(model, tokenizer, out_dir / "model", item_scids, user_scids)
    use_user = cfg.prompts.user_scid_in_prompt and user_scids is not None
    out: dict[str, Any] = {"train": train_summary, "model_dir": str(model_dir)}
    for name in evaluate_splits:
        out[name] = evaluate(model, tokenizer, item_scids, user_scids, split.samples(name), cfg.decode, use_user,
                             max_length=cfg.sft.max_length, progress=progress)
    flat = {f"train_{k}": v for k, v in train_summary.items()}
    for name in evaluate_splits:
        flat.update({f"{name}_{k}": v for k, v in out[name].items()})
    out["metrics"] = flat
    write_json(out_dir / "metrics.json", out)
    if stage_run is None and own is not None:
        own.finish(flat)
    return out


def _unwrap(model):
    """The model without DDP/accelerate wrappers (PEFT kept: it still runs forward)."""
    return getattr(model, "module", model)


def read_log_history(out_dir: str | Path) -> list[dict]:
    """The trainer's ``log_history`` saved by :func:`train_sft`."""
    return read_json(Path(out_dir) / "log_history.json")
