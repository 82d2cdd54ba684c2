"""Multi-task SFT with ``transformers.Trainer`` (behaviour level): tokenise prompt/completion pairs,
train, build the backbone.

* :func:`train_sft`: tokenize (:mod:`align3gr_kit.model.encoding`, loss on the completion only),
  optionally wrap with LoRA, train, save the loss history.
* :func:`build_sft_model`: the backbone with the stage-03 tokenizer and SA-Init keywords.
* :func:`fixed_task_a_mix`: the one-pass mix of ``sft.fixed_task_a`` (a fixed number of task-A
  examples, the other tasks on top), so that adding a task adds training instead of diluting task A.

The stages that use them are :mod:`align3gr_kit.stages.s03_sft_prompts` and
:mod:`align3gr_kit.stages.s04_sft`. Several processes: ``torchrun --nproc_per_node N -m
align3gr_kit.train.sft_main --config C`` or ``accelerate launch -m align3gr_kit.train.sft_main
--config C``; the Trainer does data parallel (gloo on CPU, NCCL on GPUs; DeepSpeed/FSDP through an
accelerate config).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from align3gr_kit.config import RunConfig
from align3gr_kit.distributed import main_decides
from align3gr_kit.model.attention import forward_accepts
from align3gr_kit.train.artifacts import write_log_history

IGNORE_INDEX = -100  # label of tokens without loss (transformers' causal-LM loss ignores it)
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


# ---------------------------------------------------------------------------- fixed task-A budget
def task_a_budget(cfg: RunConfig, n_task_a: int) -> int:
    """``sft.fixed_task_a``'s task-A examples: ``max_steps x batch_size x grad_accum`` (what the A-only
    dataset sees in ``max_steps`` steps of one process), or ``round(epochs x n_task_a)`` when training by
    epochs (``max_steps`` 0)."""
    s = cfg.sft
    return s.max_steps * s.batch_size * s.grad_accum if s.max_steps > 0 else int(round(s.epochs * n_task_a))


def task_mix_counts(available: dict[str, int], task_a: int) -> dict[str, int]:
    """Examples of each task in a mix holding ``task_a`` task-A examples, the other tasks on top in their
    dataset proportion to A: ``{"A": task_a, t: round(task_a x n_t / n_A)}`` (``available``: rows per task).

    Raises:
        ValueError: the dataset has no task-A row (nothing to fix the budget by).
    """
    n_a = available.get("A", 0)
    if n_a <= 0:
        raise ValueError(f"sft.fixed_task_a: the SFT dataset has no task-A rows (tasks {sorted(available)}); add A to "
                         "prompts.tasks or set sft.fixed_task_a: false")
    return {t: task_a if t == "A" else int(round(task_a * n / n_a)) for t, n in available.items()}


def fixed_task_a_mix(sft, cfg: RunConfig):
    """The one-pass training set of ``sft.fixed_task_a``: each task's rows of ``sft`` (a ``datasets.Dataset``
    with a ``task`` column) cycled to :func:`task_mix_counts` examples: whole passes over the task's rows,
    then a seeded sample without replacement of the remainder, so every row is seen ``floor`` or ``ceil``
    of ``count / rows`` times.

    Returns:
        ``(dataset, {"task_a_examples": E_A, "mix_examples": total, "task_examples": {task: count}})``; the
        Trainer shuffles the rows (length-grouped), so their order here plays no part.
    """
    if "task" not in sft.column_names:
        raise ValueError("sft.fixed_task_a: the SFT dataset has no 'task' column to count task-A rows by; build it "
                         "with align3gr_kit.prompts.build_sft_dataset or set sft.fixed_task_a: false")
    tasks = np.asarray(sft["task"], dtype=object)
    names = list(dict.fromkeys(tasks.tolist()))  # the dataset's task order
    rows = {t: np.flatnonzero(tasks == t) for t in names}
    counts = task_mix_counts({t: len(r) for t, r in rows.items()}, task_a_budget(cfg, int((tasks == "A").sum())))
    rng = np.random.default_rng([cfg.seed, 11])
    picked = []
    for t in names:
        whole, rest = divmod(counts[t], len(rows[t]))
        picked += [rows[t]] * whole + [np.sort(rng.choice(rows[t], size=rest, replace=False))]
    index = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return sft.select(index), {"task_a_examples": counts["A"], "mix_examples": int(len(index)), "task_examples": counts}


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

    With ``logits_to_keep`` (models whose forward takes it, e.g. Llama, BERT): logits only where a
    label is. The batch carries ``logits_to_keep``, a boolean ``[B, T]`` mask of the ``N`` positions
    whose *next* token is a completion token (the last prompt token predicts the first completion
    token), and ``labels`` = ``shift_labels`` = those next tokens, ``[N]``. transformers' forward then
    runs the LM head on the ``N`` selected hidden states only (``slice_logits_to_keep``, flattened to
    ``[N, d]``) and its causal-LM loss takes ``shift_labels`` as given; the Trainer counts the ``N``
    items from ``shift_labels``. Same loss and gradients as full logits (a test checks), but the head,
    the vocabulary-wide softmax and its backward (peft's trainable-token wrapper computes the whole
    ``V x d`` weight gradient) run on ``N`` positions instead of ``B x T``: with SmolLM2's 49k
    vocabulary, one head position costs about a quarter of a body token.

    Written by hand because trl's collator comes with ``SFTTrainer``, which cannot train the SCID
    rows of tied backbones (see :mod:`align3gr_kit.model.lora`); the rule is a few lines.
    """

    pad_id: int
    logits_to_keep: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), int(self.pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, row in enumerate(rows):
            x = torch.as_tensor(row["input_ids"], dtype=torch.long)
            comp = torch.as_tensor(row["completion_mask"], dtype=torch.bool)
            ids[r, width - len(x):] = x
            mask[r, width - len(x):] = 1
            labels[r, width - len(x):] = x.masked_fill(~comp, IGNORE_INDEX)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}
        if self.logits_to_keep:
            # position p predicts token p + 1: keep the positions whose next token carries a label
            scored = torch.nn.functional.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)
            targets = labels[:, 1:][scored[:, :-1]]
            batch.update(logits_to_keep=scored, labels=targets, shift_labels=targets)
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


def training_args(cfg: RunConfig, out_dir: str | Path, checkpoint_dir: str | Path | None = None):
    """``transformers.TrainingArguments`` from the run config.

    With ``checkpoint_dir`` and ``sft.save_steps > 0`` (or ``sft.save_minutes > 0``) the Trainer writes a
    full checkpoint (weights or adapter, optimiser, scheduler, RNG states) there every ``save_steps``
    steps (and every ``save_minutes`` of wall time: :class:`WallClockCheckpoints`), keeping the last one
    only; :func:`train_sft` resumes from it.

    Several processes: ``ddp_timeout`` is ``distributed.timeout_minutes`` (the group itself got it from
    :func:`align3gr_kit.distributed.process_state`), ``ddp_find_unused_parameters`` is
    ``distributed.find_unused_parameters`` (off: every trainable parameter gets a gradient). Several GPUs
    without a launch are refused before the arguments exist (their ``n_gpu`` would mean DataParallel).
    ``sft.gradient_checkpointing``: transformers' non-reentrant activation checkpointing (the model's
    ``activation_checkpointing_enable`` also adds the input-gradient hook LoRA models need).

    Precision from ``model.dtype`` (:func:`align3gr_kit.model.precision.trainer_precision`): ``bf16=True``
    is accelerate's bf16 autocast, on a GPU and on CPUs with AMX/AVX512-BF16 alike (fp32 master
    weights). Batches are length-grouped (``train_sampling_strategy="group_by_length"`` over the
    ``length`` column): rows of similar length share a batch, so little of the compute is padding.
    """
    import torch
    from transformers import TrainingArguments

    from align3gr_kit.distributed import refuse_data_parallel
    from align3gr_kit.model.precision import trainer_precision

    refuse_data_parallel()
    s = cfg.sft
    saving = checkpoint_dir is not None and (s.save_steps > 0 or s.save_minutes > 0)
    return TrainingArguments(
        output_dir=str(checkpoint_dir if saving else Path(out_dir) / "trainer"),
        # sft.fixed_task_a: one pass over the mix fixed_task_a_mix built, whatever max_steps and epochs say
        num_train_epochs=1 if s.fixed_task_a else s.epochs,
        max_steps=s.max_steps if s.max_steps > 0 and not s.fixed_task_a else -1,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        logging_steps=s.logging_steps,
        logging_first_step=True,  # a loss curve even when max_steps < logging_steps
        save_strategy="steps" if saving else "no",
        # save_steps 0 with save_minutes: checkpoints by wall time only (no step ever reaches the huge period)
        save_steps=s.save_steps if s.save_steps > 0 else 10**9,
        save_total_limit=1,
        report_to="none",
        **trainer_precision(cfg.model.dtype),
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,  # the collator needs completion_mask, which forward() does not take
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=cfg.distributed.find_unused_parameters,
        ddp_timeout=int(cfg.distributed.timeout_minutes * 60),
        activation_checkpointing=s.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if s.gradient_checkpointing else None,
    )


class WallClockCheckpoints(TrainerCallback):
    """Ask the Trainer for a checkpoint when ``minutes`` of wall time passed since the last one (``sft.save_minutes``).

    Step-based saving is sized by step time, which differs by orders of magnitude between a CPU and a
    GPU; this bounds the work a kill loses in time instead. The main process's clock decides for every
    rank (:func:`align3gr_kit.distributed.main_decides`): a save has collectives under DeepSpeed, and
    ranks whose clocks disagreed would wait for each other.
    """

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        # asked at logging steps only: under a launch each decision is a broadcast the host waits for,
        # and a checkpoint one logging period late costs nothing
        if state.global_step % args.logging_steps == 0 and main_decides(time.monotonic() - self.last >= self.seconds):
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()
        return control


class WallClockBudget(TrainerCallback):
    """Stop training once ``minutes`` of wall time have passed since it began (``sft.max_minutes``).

    Checked after every optimiser step; the main process's clock decides for every rank
    (:func:`align3gr_kit.distributed.main_decides`), so all ranks stop at the same step. ``stopped``
    says whether the budget, not ``max_steps``, ended the run.
    """

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.start = time.monotonic()
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if main_decides(time.monotonic() - self.start >= self.seconds):
            control.should_training_stop = self.stopped = True
        return control


class LogAtCheckpoints(TrainerCallback):
    """Log the loss at every step a checkpoint is saved (added after every callback that asks for one).

    The Trainer keeps the loss of the steps since the last log in memory only: a checkpoint between two
    logs loses it, and a run resumed from there could not know its mean loss over all steps. Logged
    first, it is in the checkpoint's ``trainer_state.json``, and :func:`mean_loss_over_steps` has every
    step. Every rank agrees on ``should_save`` (step counts, or the main process's clock), so every
    rank joins the log's loss gather at the same step.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control


def mean_loss_over_steps(history: list[dict], resumed: int, call_loss: float, steps: int) -> tuple[float, int]:
    """The mean training loss over every step whose loss is known, and how many steps that is.

    ``Trainer.train().training_loss`` averages only the steps of that call, ``resumed + 1 .. steps`` after
    a resume; the earlier steps come from the restored ``history`` (``log_history``), whose ``loss``
    entries up to step ``resumed`` each hold the mean over the steps since the previous entry.

    Args:
        history: the trainer's ``log_history`` (entries with ``step`` and, at logging steps, ``loss``).
        resumed: the step training resumed from (0: not resumed, ``call_loss`` is already the answer).
        call_loss: ``training_loss`` of the call, over ``steps - resumed`` steps.
        steps: the last step (``global_step``).
    Returns:
        ``(mean loss, steps it averages)``; fewer than ``steps`` when a checkpoint written without
        :class:`LogAtCheckpoints` left steps before it unlogged.
    """
    if not resumed:
        return call_loss, steps
    total = covered = previous = 0
    for h in history:
        if "loss" in h and previous < h["step"] <= resumed:
            total += h["loss"] * (h["step"] - previous)
            covered += h["step"] - previous
            previous = h["step"]
    n = steps - resumed
    return (total + call_loss * n) / max(covered + n, 1), covered + n


def train_sft(cfg: RunConfig, model, tokenizer, train_ds, out_dir: str | Path, checkpoint_dir: str | Path | None = None,
              callbacks: Sequence[Any] = ()) -> dict[str, Any]:
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
        checkpoint_dir: where resumable checkpoints go every ``sft.save_steps`` steps (a folder
            that outlives a killed run: :attr:`align3gr_kit.stages.contract.StageRun.checkpoint_dir`).
            When it already holds one, training continues from its last step (same data order,
            optimiser and RNG states) instead of starting again. ``None`` = no checkpoints.
        callbacks: extra ``transformers.TrainerCallback`` objects.
    Returns:
        ``{"model": trained model (PEFT-wrapped when LoRA), "trainable": {...}, "train_loss",
        "train_loss_steps", "first_loss", "last_loss", "steps", "world_size", "global_batch", "examples_seen",
        "stopped_by_time", "lr", "seconds",
        "padding": {...}, "bf16", "fp16", "log_history": [...], "trainer", "resumed_from_step"}`` (``seconds``: this
        call's training time only, when it resumed; ``train_loss``: the mean over all ``train_loss_steps``
        steps, those before a resume included, :func:`mean_loss_over_steps`), and ``"task_a_examples"``,
        ``"mix_examples"``, ``"task_examples"``: what the one pass of ``sft.fixed_task_a`` holds
        (:func:`fixed_task_a_mix`; None without it).
    """
    from accelerate.utils import extract_model_from_parallel
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from align3gr_kit.model.lora import apply_lora, trainable_parameters

    out_dir = Path(out_dir)
    if cfg.model.lora and not hasattr(model, "peft_config"):
        model = apply_lora(model, cfg.model)
    trainable = trainable_parameters(model)
    if not embeddings_trainable(model):
        raise RuntimeError("the SCID token rows are frozen (input embedding or output layer); with LoRA they must be "
                           "trainable tokens (align3gr_kit.model.lora.apply_lora does this)")
    print(f"trainable parameters: {trainable['trainable']:,} of {trainable['total']:,} "
          f"({100 * trainable['share']:.2f}%); embeddings and output layer trainable: yes")
    mix = {}
    if cfg.sft.fixed_task_a:
        train_ds, mix = fixed_task_a_mix(train_ds, cfg)
        print(f"fixed task-A budget: {mix['task_a_examples']:,} task-A examples, {mix['mix_examples']:,} in all "
              f"({', '.join(f'{t} {n:,}' for t, n in mix['task_examples'].items())}), one pass")
    tokenized = tokenize_sft(train_ds, tokenizer, cfg.sft.max_length)
    args = training_args(cfg, out_dir, checkpoint_dir)
    last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir and Path(checkpoint_dir).is_dir() else None
    resumed = int(Path(last).name.rsplit("-", 1)[1]) if last else 0
    padding = length_grouping_report(tokenized["length"], cfg.sft.batch_size, cfg.sft.batch_size * cfg.sft.grad_accum,
                                     cfg.seed)
    print(f"padding share of SFT batches: {padding['padding_random']:.1%} in random order, "
          f"{padding['padding_grouped']:.1%} length-grouped; autocast: {'bf16' if args.bf16 else 'fp16 (loss-scaled)' if args.fp16 else 'off'}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = CompletionCollator(int(pad_id), logits_to_keep=forward_accepts(model, "logits_to_keep"))
    callbacks = list(callbacks)
    budget = WallClockBudget(cfg.sft.max_minutes) if cfg.sft.max_minutes > 0 else None
    if budget is not None:
        callbacks.append(budget)
    if args.save_strategy != "no" and cfg.sft.save_minutes > 0:
        callbacks.append(WallClockCheckpoints(cfg.sft.save_minutes))
    if args.save_strategy != "no":
        callbacks.append(LogAtCheckpoints())  # last: it reads the save decision of the callbacks before it
    trainer = Trainer(model=model, args=args, train_dataset=tokenized, data_collator=collator, processing_class=tokenizer,
                      callbacks=callbacks or None)
    if last:
        print(f"resuming SFT from step {resumed} ({last}): a killed run of this same stage left it")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    seconds = time.time() - t0
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    train_loss, loss_steps = mean_loss_over_steps(history, resumed, float(result.training_loss),
                                                  int(trainer.state.global_step))
    if trainer.is_world_process_zero():
        write_log_history(out_dir, history)
    return {
        # without accelerate's autocast wrapper around forward: evaluation picks its own precision
        "model": extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False),
        "trainable": trainable,
        "train_loss": train_loss,
        "train_loss_steps": loss_steps,
        "first_loss": float(losses[0]) if losses else float("nan"),
        "last_loss": float(losses[-1]) if losses else float("nan"),
        "steps": int(trainer.state.global_step),
        "world_size": int(trainer.args.world_size),
        # what one optimiser step saw and did: per-device batch x grad_accum x world size
        "global_batch": int(trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
                            * trainer.args.world_size),
        # rows trained on (every step but a last partial batch is full): what equal-wall-time comparisons read
        "examples_seen": int(trainer.state.global_step * trainer.args.per_device_train_batch_size
                             * trainer.args.gradient_accumulation_steps * trainer.args.world_size),
        "stopped_by_time": bool(budget is not None and budget.stopped),
        "lr": float(trainer.args.learning_rate),
        "seconds": round(seconds, 2),
        "padding": padding,
        "bf16": bool(args.bf16),
        "fp16": bool(args.fp16),
        "log_history": history,
        "trainer": trainer,
        "resumed_from_step": resumed,
        # sft.fixed_task_a: the examples of the one pass (task A, all tasks, per task); None otherwise
        "task_a_examples": mix.get("task_a_examples"),
        "mix_examples": mix.get("mix_examples"),
        "task_examples": mix.get("task_examples"),
    }


def embeddings_trainable(model) -> bool:
    """Whether the input embedding and the output layer (SCID rows included) receive gradients.

    Under peft, ``get_input_embeddings()``/``get_output_embeddings()`` return the trainable-token
    wrappers, whose SCID-row deltas are what trains; a plain LoRA model would fail this check (the
    known pitfall).
    """
    mods = [model.get_input_embeddings(), model.get_output_embeddings()]
    return all(any(p.requires_grad for p in m.parameters()) for m in mods if m is not None)


def build_sft_model(cfg: RunConfig, ds, item_scids, user_scids, tokenizer, keyword_cache=None, reuse_keywords=None):
    """The backbone for SFT with the stage-03 tokenizer and SA-Init keywords when enabled (item tokens of
    the first ``model.sa_init_levels`` of the ``tokenizer.levels`` semantic levels:
    :func:`align3gr_kit.model.sa_init.scid_keywords`).

    ``keyword_cache``/``reuse_keywords``: folders of the LLM keyword cache (``model.sa_init_extractor: llm``;
    :func:`align3gr_kit.model.sa_init.keyword_extractor`). With the LLM extractor, the model's
    ``align3gr_init_stats`` also counts ``keywords_llm`` and ``keywords_fallback`` (TF-IDF) tokens.
    """
    from align3gr_kit.model.backbone import build_backbone
    from align3gr_kit.model.sa_init import keyword_extractor, scid_keywords

    keywords = extractor = None
    if cfg.model.sa_init:
        extractor = keyword_extractor(cfg.model, keyword_cache, reuse_keywords)
        keywords = scid_keywords(ds, item_scids, cfg.model.sa_init_keywords, extractor, levels=cfg.model.sa_init_levels,
                                 semantic_levels=cfg.tokenizer.levels)
    model, tokenizer = build_backbone(cfg.model, [], scid_vocabulary(item_scids, user_scids), cfg.seed,
                                      tokenizer=tokenizer, keywords=keywords)
    if extractor is not None:
        model.align3gr_init_stats.update({"keywords_llm": extractor.stats["llm"],
                                          "keywords_fallback": extractor.stats["fallback"]})
    return model, tokenizer
