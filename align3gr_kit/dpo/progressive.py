"""Progressive DPO: a list of stages, each with its own preference data; the policy trained in stage
i is the frozen reference of stage i+1.

For every stage (a round: regenerate from the current policy, then train) ``s`` in order::

    reference = make_reference(policy)             frozen copy of the current policy (stage 1: the starting model)
    examples  = stage_examples(s, reference)       s.build: the preference pairs, from this reference's beams
    examples  = with_reference_logps(examples, reference)   the reference's log-probs (training uses them
                                                   with dpo.precompute_ref, else scores on the fly)
    policy    = train_stage(policy, reference, examples)    Softmax-DPO training (a LoRA adapter merged),
                                                   ceil(epochs * s.prompts / global batch) steps unless
                                                   dpo.max_steps: the budget is the prompts, not the examples
    margins   = pair_margins(examples, policy)     log pi(chosen) - log pi(rejected_j) per pair, before / after
    metrics   = evaluate_fn(policy)                validation/test after every stage
    save        out_dir/<s>/model (+ tokenizer), preferences.jsonl, pair_margins.json, log_history.json,
                results.json (stage_entry)

``out_dir/history.json`` (rewritten after each stage) lists every stage's budget (prompts, steps,
round of rounds), its pairs (examples, mean rejected per example, the mean chosen-minus-rejected
margin under the reference and under the trained policy, the share of pairs whose margin rose), final
training statistics, metrics, and parameter fingerprints of its reference and trained policy (the
reference fingerprint of stage i+1 equals the policy fingerprint of stage i).

Under ``accelerate launch`` / ``torchrun`` every rank runs this together. The stage's examples must
be the same on every rank (DDP pairs the ranks' batches; datasets of different lengths hang it): the
``build`` functions share their beam searches between the ranks and gather them
(:mod:`align3gr_kit.dpo.pipeline`), the reference log-probs are computed once the same way
(:func:`align3gr_kit.distributed.sharded_map`), and the examples' hash is compared across ranks before
training (a mismatch stops the run; the hash is ``examples_sha256`` in the stage's entry), as is the
merged policy's fingerprint after it (it is the next stage's reference). Evaluation is shared by the
ranks too (:func:`align3gr_kit.evaluate.recommend`); the main process alone writes files. Under
DeepSpeed, ZeRO-2 keeps whole parameters on every rank, so the merge runs on each rank alike; ZeRO-3 and
sharded FSDP are refused at the start (:func:`align3gr_kit.distributed.refuse_sharded_engine`).

With a ``wrap_fn`` (e.g. :func:`align3gr_kit.model.apply_lora`) each stage trains a fresh adapter
on top of the current policy and merges it afterwards (``merge_and_unload``): the next stage's
reference is then exactly the merged policy, never ``disable_adapter()`` (which would also drop
the trained SCID embedding rows).

Imports of the kit: ``config``, ``distributed``, ``model.precision``, ``train.artifacts``, ``utils``
and ``dpo.artifacts``/``shared_prompt``/``trainer``; never ``dpo.pipeline``, which calls it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import TrainingArguments
from trl.trainer.utils import disable_dropout_in_model

from align3gr_kit.config import DistributedConfig, DPOConfig
from align3gr_kit.distributed import (
    check_ranks_agree,
    examples_hash,
    process_state,
    refuse_data_parallel,
    refuse_deepspeed_low_precision_merge,
    sharded_map,
)
from align3gr_kit.dpo.trainer import (
    SoftmaxDPOCollator,
    SoftmaxDPOTrainer,
    make_reference,
    parameter_fingerprint,
    precompute_reference_logps,
)
from align3gr_kit.dpo.artifacts import HISTORY, PAIR_MARGINS, PREFERENCES
from align3gr_kit.dpo.shared_prompt import shared_prompt_supported
from align3gr_kit.train.artifacts import MODEL, write_log_history, write_metrics
from align3gr_kit.model.precision import trainer_precision
from align3gr_kit.utils import atomic_path, write_json

TRAIN_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@dataclass
class StageSpec:
    """One progressive stage.

    Attributes:
        name: folder name and label (``easy``, ``medium``, ``hard``, ``all``, ``random``...).
        build: ``build(reference_model) -> list of preference examples`` (see
            :class:`~align3gr_kit.dpo.trainer.SoftmaxDPOCollator`); it receives the stage's frozen
            reference, which equals the policy at the start of the stage.
        prompts: the prompts the stage draws (its budget: the steps are counted over them, so a
            stage whose prompts give fewer examples trains as long); None = the examples.
        info: fields recorded in the stage's entry before its statistics (``round``, ``rounds``,
            ``difficulty``...).
        extra: ``() -> dict`` called after ``build``: more fields for the entry (e.g. the agreement
            of RF-DPO's oracle with the judge on the items shown); None = none.
    """

    name: str
    build: Callable[[torch.nn.Module], list[dict]]
    prompts: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extra: Callable[[], dict[str, Any]] | None = None


def run_progressive(
    policy: torch.nn.Module,
    tokenizer,
    stages: list[StageSpec],
    cfg: DPOConfig,
    out_dir: str | Path,
    evaluate_fn: Callable[[torch.nn.Module], dict] | None = None,
    seed: int = 0,
    encode_prompt: Callable[[str], list[int]] | None = None,
    max_length: int = 256,
    wrap_fn: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    save_fn: Callable[[torch.nn.Module, Any, Path], Any] | None = None,
    precision: str = "auto",
    start_metrics: dict | None = None,
    distributed: DistributedConfig | None = None,
) -> dict[str, Any]:
    """Train the stages in order (see the module docstring).

    Args:
        policy: the starting policy (a Hugging Face causal LM), trained in place stage after stage.
        tokenizer: its tokenizer (saved beside every stage's model).
        stages: the stages, in order.
        cfg: the DPO settings (beta, batch size, lr, epochs/steps, precompute_ref, share_prompt...).
        out_dir: where ``<stage>/`` folders and ``history.json`` go.
        evaluate_fn: ``evaluate_fn(model) -> dict`` of metrics, run before the first stage
            (``start``) and after every stage, on every process (under a launch every rank must call
            it: :func:`align3gr_kit.evaluate.evaluate` shares the beam search); None skips evaluation.
        seed: Trainer seed.
        encode_prompt: ``prompt -> token ids`` shared with the self-play beam search and evaluation
            (default: :func:`align3gr_kit.model.encoding.prompt_encoder`).
        max_length: prompt + response tokens per sequence (the collator cuts longer prompts).
        wrap_fn: ``policy -> trainable model`` (e.g. LoRA) applied at every stage and merged after
            it (the wrapped model must offer ``merge_and_unload``); None = full fine-tuning.
        save_fn: ``save_fn(model, tokenizer, folder)``; default ``save_pretrained`` of both.
        precision: ``model.dtype`` (:mod:`align3gr_kit.model.precision`): training (``bf16``
            autocast where the hardware has it) and the reference log-probs alike.
        start_metrics: the starting policy's metrics when they were already measured by the same
            ``evaluate_fn`` (the upstream stage's last evaluation); None = evaluate it here.
        distributed: the process-group settings (``ddp_timeout``, ``ddp_find_unused_parameters``);
            None = :class:`~align3gr_kit.config.DistributedConfig`'s defaults.
    Returns:
        ``{"start": metrics|None, "stages": [per-stage entries], "final_model": path, "policy": model}``.
    """
    if not stages:
        raise ValueError("run_progressive: no stages to train (check dpo.sp_stages / dpo.rf_stages)")
    out_dir = Path(out_dir)
    refuse_deepspeed_low_precision_merge(precision)
    # TrainingArguments sets up the distributed state the Trainer will use (e.g. gloo for CPU
    # processes under torchrun); read it from there so "main process" means the same thing here.
    device = _training_args(cfg, out_dir, seed, precision, distributed).device
    state = process_state()
    policy.to(device)
    disable_dropout_in_model(policy)  # DPO compares log-probs of the same sequences: no dropout noise
    if start_metrics is None and evaluate_fn:  # every rank: the evaluation is shared between them
        start_metrics = evaluate_fn(policy)
    history: dict[str, Any] = {"start": start_metrics if evaluate_fn else None, "stages": []}
    policy_fp = None  # after a stage: its trained policy's fingerprint, which is the next reference's
    for spec in stages:
        stage_dir = out_dir / spec.name
        reference = make_reference(policy)
        examples = stage_examples(spec, reference)
        if state.is_main_process:
            _write_jsonl(stage_dir / PREFERENCES, examples)
        collator = SoftmaxDPOCollator(tokenizer, max_length=max_length, encode_prompt=encode_prompt,
                                      share_prompt=cfg.share_prompt and shared_prompt_supported(policy))
        reference_fp = policy_fp or parameter_fingerprint(reference)  # a copy of the policy: the same weights
        # the reference's log-probs: the margins before training, and the loss's reference when precomputed
        scored = with_reference_logps(examples, reference, collator, cfg.batch_size, precision)
        if cfg.precompute_ref:  # then the frozen copy is no longer needed: freed before training
            examples, reference = scored, None
        trained = train_stage(policy, reference, examples, collator, cfg, stage_dir, spec.name, seed=seed,
                              wrap_fn=wrap_fn, precision=precision, distributed=distributed, prompts=spec.prompts)
        policy, reference, policy_fp = trained.policy, None, trained.policy_fingerprint
        margins = pair_margins(scored, with_reference_logps(scored, policy, collator, cfg.batch_size, precision))
        if state.is_main_process:
            (save_fn or _save_pretrained)(policy, tokenizer, stage_dir / MODEL)
            write_log_history(stage_dir, trained.log_history)
            write_json(stage_dir / PAIR_MARGINS, margins)
        metrics = evaluate_fn(policy) if evaluate_fn else None
        entry = stage_entry(spec.name, examples, trained, reference_fp, metrics,
                            {**spec.info, "prompts": spec.prompts if spec.prompts is not None else len(examples),
                             **margin_stats(margins), **(spec.extra() if spec.extra else {})})
        history["stages"].append(entry)
        if state.is_main_process:
            write_metrics(stage_dir, entry)
            write_json(out_dir / HISTORY, {**history, "final_model": entry["model_dir"]})
        state.wait_for_everyone()
    history["final_model"] = str(out_dir / stages[-1].name / MODEL)
    history["policy"] = policy
    return history


def stage_examples(spec: StageSpec, reference: torch.nn.Module) -> list[dict]:
    """The stage's preference examples, built from its frozen ``reference`` (``spec.build``); an
    empty list is an error that says what to change."""
    examples = spec.build(reference)
    if not examples:
        raise ValueError(
            f"stage {spec.name!r}: no preference examples could be built (no prompt got a rejected response); "
            "raise dpo.max_prompts or check the stage's data source"
        )
    return examples


def pair_margins(before: list[dict], after: list[dict]) -> dict[str, list]:
    """Per pair, ``log pi(chosen|x) - log pi(rejected_j|x)`` (sums of response-token log-probs, the
    loss's scoring) under the reference (``before``: examples with ``ref_*_logps`` of the reference)
    and under the trained policy (``after``: the same examples scored by the policy, in the same
    fields): ``{"user_id": [per example], "reference": [[per rejected] per example], "policy": [...]}``
    (the layout of ``pair_margins.json``)."""
    def margins(rows: list[dict]) -> list[list[float]]:
        return [[round(e["ref_chosen_logps"] - r, 6) for r in e["ref_rejected_logps"]] for e in rows]

    return {"user_id": [int(e.get("user_id", -1)) for e in before], "reference": margins(before),
            "policy": margins(after)}


def margin_stats(margins: dict[str, list]) -> dict[str, float]:
    """``pairs``, ``margin_before`` / ``margin_after`` (mean chosen-minus-rejected log-prob margin over
    every pair under the reference / the trained policy) and ``margin_up_share`` (share of pairs whose
    margin rose) of :func:`pair_margins`."""
    ref = [m for row in margins["reference"] for m in row]
    pol = [m for row in margins["policy"] for m in row]
    if not ref:
        return {"pairs": 0}
    return {"pairs": len(ref), "margin_before": round(sum(ref) / len(ref), 4),
            "margin_after": round(sum(pol) / len(pol), 4),
            "margin_up_share": round(sum(b > a for a, b in zip(ref, pol)) / len(ref), 4)}


def with_reference_logps(examples: list[dict], reference: torch.nn.Module, collator: SoftmaxDPOCollator,
                         batch_size: int, precision: str = "auto") -> list[dict]:
    """The examples with the reference's log-probs of their responses (``ref_chosen_logps``,
    ``ref_rejected_logps``), computed once before training: each rank scores its share of the
    batches, every rank gets all of them."""
    return sharded_map(examples, batch_size, lambda part: precompute_reference_logps(
        reference, part, collator, batch_size=batch_size, precision=precision))


@dataclass
class TrainedStage:
    """What training one stage gives back.

    Attributes:
        policy: the trained policy, unwrapped from accelerate and merged (with a ``wrap_fn``), in eval mode.
        examples_sha256: the hash of the examples it trained on, the same on every rank.
        policy_fingerprint: :func:`~align3gr_kit.dpo.trainer.parameter_fingerprint` of ``policy``,
            the same on every rank (it is the next stage's reference).
        log_history: the Trainer's log history.
        run: ``steps``, ``world_size``, ``global_batch`` (per-device batch x grad_accum x world size),
            ``lr``, ``train_loss``.
    """

    policy: torch.nn.Module
    examples_sha256: str
    policy_fingerprint: str
    log_history: list[dict]
    run: dict[str, Any]


def train_stage(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    examples: list[dict],
    collator: SoftmaxDPOCollator,
    cfg: DPOConfig,
    stage_dir: Path,
    name: str,
    seed: int = 0,
    wrap_fn: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    precision: str = "auto",
    distributed: DistributedConfig | None = None,
    prompts: int | None = None,
) -> TrainedStage:
    """Softmax-DPO training of ``policy`` on ``examples``, every rank alike (the arguments are
    :func:`run_progressive`'s; ``name`` labels the agreement checks). ``prompts``: the stage's prompt
    budget; with ``cfg.max_steps`` 0 it trains ``ceil(cfg.epochs * prompts / global batch)`` steps
    (:func:`budget_steps`), however many examples the prompts gave; None = by epochs over the examples.

    ``reference``: the frozen reference scored on the fly, or None when ``examples`` carry its
    log-probs (:func:`with_reference_logps`). The examples' hash is compared across ranks before
    training, the trained policy's fingerprint after it.
    """
    examples_sha = check_ranks_agree(examples_hash(examples), f"DPO stage {name!r}: the training examples")[0]
    trainable = wrap_fn(policy) if wrap_fn else policy
    disable_dropout_in_model(trainable)  # and in the adapters wrap_fn adds: policy scored as the reference
    args = _training_args(cfg, stage_dir, seed, precision, distributed)
    if prompts is not None and not cfg.max_steps:
        args.max_steps = budget_steps(cfg, prompts, args.world_size)
    trainer = SoftmaxDPOTrainer(
        model=trainable,
        ref_model=reference,
        beta=cfg.beta,
        args=args,
        train_dataset=_dataset(examples),
        data_collator=collator,
        processing_class=collator.tokenizer,
    )
    result = trainer.train()
    # accelerate wraps a trained model's forward in its autocast and leaves it there; unwrapped, the
    # policy scores (evaluation, the next reference) in the precision precision.autocast gives it
    unwrapped = extract_model_from_parallel(trainable, keep_fp32_wrapper=False)
    policy = unwrapped.merge_and_unload() if wrap_fn else unwrapped
    policy.eval()
    # the merged policy is the next stage's reference: the ranks must hold the same one
    policy_fp = check_ranks_agree(parameter_fingerprint(policy), f"DPO stage {name!r}: the trained policy")[0]
    args = trainer.args
    run = {
        "steps": trainer.state.global_step,
        "world_size": int(args.world_size),
        "global_batch": int(args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size),
        "lr": float(args.learning_rate),
        "train_loss": float(result.training_loss),
    }
    return TrainedStage(policy, examples_sha, policy_fp, trainer.state.log_history, run)


def budget_steps(cfg: DPOConfig, prompts: int, world_size: int = 1) -> int:
    """Optimiser steps of a stage of ``prompts`` prompts: ``cfg.max_steps``, or
    ``ceil(cfg.epochs * prompts / (batch_size * grad_accum * world_size))`` (at least 1)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    return max(1, math.ceil(cfg.epochs * prompts / (cfg.batch_size * cfg.grad_accum * max(1, world_size))))


def stage_entry(name: str, examples: list[dict], trained: TrainedStage, reference_fingerprint: str,
                metrics: dict | None, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stage's entry in ``history.json`` (also its ``results.json``): sizes, how it trained, the
    reference's and the trained policy's fingerprints, the model folder (relative: the stage folder is
    renamed into place), the policy's ``metrics``, then ``stats`` (the round, its prompt budget, the
    pair margins..., after the keys older runs' entries hold)."""
    n_rejected = sum(len(e["rejected"]) for e in examples)
    return {
        "stage": name,
        "n_examples": len(examples),
        "mean_rejected": round(n_rejected / len(examples), 4),
        "from_beams_share": round(sum(e.get("from_beams", 0) for e in examples) / max(1, n_rejected), 4),
        "examples_sha256": trained.examples_sha256,
        **trained.run,
        "train": last_logged(trained.log_history),
        "reference_fingerprint": reference_fingerprint,
        "policy_fingerprint": trained.policy_fingerprint,
        "model_dir": f"{name}/{MODEL}",
        "metrics": metrics,
        **(stats or {}),
    }


def last_logged(log_history: list[dict]) -> dict[str, float]:
    """The last logged value of each training statistic (``loss``, ``rewards/*``)."""
    out: dict[str, float] = {}
    for entry in log_history:
        for k in TRAIN_KEYS:
            if k in entry:
                out[k] = float(entry[k])
    return out


def _training_args(cfg: DPOConfig, stage_dir: Path, seed: int, precision: str,
                   distributed: DistributedConfig | None = None) -> TrainingArguments:
    distributed = distributed or DistributedConfig()
    refuse_data_parallel()  # before the arguments exist: their n_gpu would make the Trainer use DataParallel
    max_steps = cfg.max_steps or -1
    return TrainingArguments(
        output_dir=str(stage_dir / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=max_steps,
        learning_rate=cfg.lr,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,  # the collator reads the raw prompt/chosen/rejected columns
        seed=seed,
        data_seed=seed,
        **trainer_precision(precision),
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # on CPU, bf16=True is accelerate's CPU autocast
        ddp_timeout=int(distributed.timeout_minutes * 60),
        ddp_find_unused_parameters=distributed.find_unused_parameters,
        activation_checkpointing=cfg.gradient_checkpointing,  # non-reentrant; adds the LoRA input-grad hook
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
    )


def _dataset(examples: list[dict]):
    from datasets import Dataset

    keep = ("prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps",
            "prompt_ids", "chosen_ids", "rejected_ids")
    return Dataset.from_list([{k: e[k] for k in keep if k in e} for e in examples])


def _save_pretrained(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
