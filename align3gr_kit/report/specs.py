"""What the report measures: which rows each table has and how each row's config differs.

Every row of a table (and every rung of the ablation ladder, every generative baseline) is the same
pipeline with different dotted config overrides: a :class:`Rung` (label, overrides, the stages it
runs). The papers' tables (``python -m align3gr_kit ablate --table NAME``) each hold the levels not
under study at the full setting of the config, as the papers do:

* ``token``  (Align3GR Table 3): six tokenizers, each against the full one (dual SCIDs, CF, U-I
  alignment): without U-I alignment; without CF; without both; item-only SCIDs with and without CF
  (item-only has no user side, so no U-I alignment either); full SFT tasks and the DPO chain after them.
* ``sft``    (Align3GR Table 4): A; +C1-C3; +B1; +user SCID in prompts; +B2; full tokenizer. Every row
  sees the same number of task-A examples (``sft.fixed_task_a``), the added tasks on top.
* ``dpo``    (Align3GR Table 5): from ONE SFT model shared by every row: Softmax-DPO with
  ``dpo.n_rejected`` negatives drawn from the SFT policy's own beam; SP-DPO without and with
  progression; RF-DPO without and with progression (after progressive SP-DPO).
* ``tsrec``  (TS-Rec Table 3): with/without SA-Init x with/without the TS-Align task.
* ``sa-depth`` (TS-Rec's depth study): random (mean-resizing) SCID rows vs SA-Init on level 1,
  levels 1-2, levels 1-3 (the other levels mean-resized); full tokenizer and SFT tasks, SFT only.
* ``backbone`` (what a pretrained LLM brings): SASRec; tiny-llama (from scratch) SFT; the config's
  pretrained backbone SFT with random (mean-resizing) SCID rows and with SA-Init; after SP-DPO. Every
  row carries its ratio to SASRec, scored on the same users.
* ``ladder`` (Align3GR Figure 4): :data:`LADDER`.

``upto`` (``sft``/``sp``/``rf``) stops the chain earlier on small machines: rows that need a later
stage are dropped, and the remaining rows end at that stage. Rows share every identical upstream
stage through ``--resume`` (e.g. the DPO table trains one SFT model).

Also: the budget fields a row records, the cheaper settings of a smoke report, and the users every
row of one table is scored on (:func:`evaluation_split`).

Layer: above :mod:`align3gr_kit.report.ledger`, beside it; imports no module of
:mod:`align3gr_kit.report` (only ``config`` and ``data.split``). Nothing here runs or reads a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.data.split import Split


LC_REC_TASKS = ["A", "B1", "C1-1", "C1-2", "C2", "C3"]
#: task A with the LC-Rec tasks the paper adds before B1 (Table 4, Figure 4: C1-C3, then B1)
A_C_TASKS = ["A", "C1-1", "C1-2", "C2", "C3"]
ALL_TASKS = ["A", "B1", "B2", "C1-1", "C1-2", "C2", "C3"]
SFT_STAGES = ("00_data", "01_tokenize", "03_sft_prompts", "04_sft")


@dataclass(frozen=True)
class Rung:
    """One configuration of the ladder: a label, the overrides that define it, the stages it runs."""

    label: str
    overrides: dict[str, Any]
    stages: tuple[str, ...] = SFT_STAGES
    note: str = ""

    @property
    def last_stage(self) -> str:
        return self.stages[-1]


def _ladder() -> list[Rung]:
    # Each rung adds one thing to the previous one (paper Figure 4, read bottom to top), and each one
    # changes what the model sees (:func:`reaching_fields`, checked by a test). Two departures from
    # the figure's order make that true: "+U-I align" comes before "+Dual SCID" (without L_U2I the
    # user side reaches nothing until user SCIDs enter the prompts; with it, dual SCIDs change the
    # user features L_U2I aligns items to, hence the item SCIDs), and "+Softmax-DPO" samples its
    # negatives from the SFT policy's own beam (the paper's baseline), not from the catalogue. The SFT
    # tasks come in the paper's order: C1-C3 before B1.
    steps: list[tuple[str, dict[str, Any], tuple[str, ...], str]] = [
        ("Single+SEQ", {"tokenizer.dual": False, "tokenizer.use_cf": False, "tokenizer.u2i_align": False,
                        "prompts.tasks": ["A"], "prompts.user_scid_in_prompt": False}, SFT_STAGES,
         "item-only semantic IDs from text, sequential task only"),
        ("+CF", {"tokenizer.use_cf": True}, SFT_STAGES, "collaborative features in the item SCIDs"),
        ("+U-I align", {"tokenizer.u2i_align": True}, SFT_STAGES,
         "L_U2I phase before RQ (item-only: users are their CF features and mean item text); moved before "
         "+Dual SCID, which changes nothing without it"),
        ("+Dual SCID", {"tokenizer.dual": True}, SFT_STAGES,
         "users tokenized from their profile text, which L_U2I aligns the items to (so the item SCIDs change)"),
        ("+C1-C3", {"prompts.tasks": A_C_TASKS}, SFT_STAGES, "asymmetric, intention, preference tasks"),
        ("+B1", {"prompts.tasks": LC_REC_TASKS}, SFT_STAGES, "item alignment task"),
        ("+User SCID", {"prompts.user_scid_in_prompt": True}, SFT_STAGES, "user SCID in every prompt"),
        ("+B2", {"prompts.tasks": ALL_TASKS}, SFT_STAGES, "user alignment task"),
        ("+Softmax-DPO", {"dpo.sp_negatives": "generated", "dpo.sp_progressive": False},
         SFT_STAGES + ("05_sp_dpo",), "negatives drawn from the SFT policy's own beam, one stage"),
        ("+SP-DPO", {"dpo.sp_negatives": "selfplay"}, SFT_STAGES + ("05_sp_dpo",),
         "self-play negatives of every difficulty, one stage"),
        ("+Progressive", {"dpo.sp_progressive": True}, SFT_STAGES + ("05_sp_dpo",), "Easy -> Medium -> Hard"),
        ("+RF-DPO", {"dpo.rf_progressive": True}, SFT_STAGES + ("05_sp_dpo", "06_rf_dpo"), "real feedback, Easy -> Hard"),
    ]
    rungs, acc = [], {}
    for label, delta, stages, note in steps:
        acc = {**acc, **delta}
        rungs.append(Rung(label, dict(acc), stages, note))
    return rungs


def reaching_fields(cfg: RunConfig, stages: tuple[str, ...]) -> dict[str, Any]:
    """The config fields of a rung that reach its final model, flat and dotted, with every field that
    cannot matter given the others masked as ``None``: the DPO sections of stages the rung does not
    run; ``tokenizer.dual`` when neither L_U2I (``u2i_align``), user SCIDs in prompts nor the B2 task
    reads the user side; ``prompts.user_scid_in_prompt`` without user SCIDs (``dual`` off); the
    self-play settings of a ``random`` SP stage. Two rungs whose values are equal train the same model
    up to seed noise."""
    d = {f"{s}.{k}": v for s, values in cfg.to_dict().items() if isinstance(values, dict) for k, v in values.items()}
    t, p = cfg.tokenizer, cfg.prompts
    if not (t.u2i_align or p.user_scid_in_prompt or "B2" in p.tasks):
        d["tokenizer.dual"] = None
    d["prompts.user_scid_in_prompt"] = bool(p.user_scid_in_prompt and t.dual)  # no user SCIDs, none in prompts
    sp_fields = ("sp_stages", "sp_negatives", "sp_difficulty", "sp_progressive", "sp_beam_width", "sp_rank_pool")
    rf_fields = ("rf_stages", "rf_progressive", "rf_oracle")
    if "05_sp_dpo" not in stages:
        d.update({f"dpo.{k}": None for k in sp_fields})
    elif cfg.dpo.sp_negatives in ("generated", "random"):  # one stage whatever the progression settings
        d.update({f"dpo.{k}": None for k in ("sp_stages", "sp_difficulty", "sp_progressive")})
    if "06_rf_dpo" not in stages:
        d.update({f"dpo.{k}": None for k in rf_fields})
    if "05_sp_dpo" not in stages and "06_rf_dpo" not in stages:
        d = {k: (None if k.startswith("dpo.") else v) for k, v in d.items()}
    return d


LADDER: list[Rung] = _ladder()


# Generative baselines: configs of the same code (not second implementations).
GENERATIVE_BASELINES: list[Rung] = [
    Rung("TIGER-style", dict(LADDER[0].overrides), SFT_STAGES,
         "item-only semantic IDs from text, sequential task only, no user SCID"),
    Rung("LC-Rec-style", {"tokenizer.dual": False, "tokenizer.use_cf": False, "tokenizer.u2i_align": False,
                          "prompts.tasks": LC_REC_TASKS, "prompts.user_scid_in_prompt": False}, SFT_STAGES,
         "item-only SCIDs, LC-Rec tasks, no user SCID, no DPO"),
    Rung("Align3GR (full)", {}, SFT_STAGES + ("05_sp_dpo", "06_rf_dpo"), "the full pipeline of the config"),
]


def config_diff(cfg: RunConfig, config_path: str) -> dict[str, Any]:
    """Dotted overrides (``{"data.dataset": "ml-100k"}``) that turn the YAML at ``config_path`` into ``cfg``,
    over the config sections only (``run_name``, ``seed``, ``smoke``, ``runs_dir`` travel separately)."""
    yaml_cfg, ours = RunConfig.from_yaml(config_path).to_dict(), cfg.to_dict()
    return {f"{section}.{k}": v for section, values in ours.items() if isinstance(values, dict)
            for k, v in values.items() if yaml_cfg[section][k] != v}


UPTO: dict[str, tuple[str, ...]] = {
    "sft": SFT_STAGES,
    "sp": SFT_STAGES + ("05_sp_dpo",),
    "rf": SFT_STAGES + ("05_sp_dpo", "06_rf_dpo"),
}


#: The config fields a row's budget is read from (what its training ran with).
BUDGET_KEYS = ("tokenizer.phase1_max_epochs", "tokenizer.phase2_epochs", "prompts.max_per_task", "sft.max_steps",
               "sft.epochs", "sft.batch_size", "sft.fixed_task_a", "sft.max_minutes", "dpo.max_prompts", "dpo.max_steps",
               "dpo.epochs", "dpo.n_rejected", "dpo.sp_beam_width", "dpo.sp_rank_pool", "decode.max_eval_users",
               "model.base")


@dataclass(frozen=True)
class TableSpec:
    """One ablation table: its rows (rungs without stages: ``upto`` sets them), which row each is
    compared with (``previous`` or ``first``), the default last stage, and its source in the papers.

    ``rows``: ``(label, overrides, last chain step it needs: "sft"/"sp"/"rf" or None = the table's
    ``upto``, note)``."""

    name: str
    title: str
    source: str
    rows: tuple[tuple[str, dict[str, Any], str | None, str], ...]
    compare: str
    default_upto: str
    baselines: tuple[str, ...] = ()  # classic baselines (``Popularity``, ``SASRec``) as the first rows
    #: ``(row, reference row, what it asks)``: steps the reading adds beside the table's own (a row
    #: against one that is not its ``compare`` reference), judged by the same spread rule
    also: tuple[tuple[str, str, str], ...] = ()
    #: what the budget line of the table's files says besides the budget fields (how rows share it)
    budget_note: str = ""
    #: the budget field every row must have true for :attr:`budget_note` to apply to a table file
    budget_note_if: str = ""
    #: a hyperparameter table: the reading names the row with the best validation Recall@10 (the choice),
    #: and only then its test numbers (test never chooses)
    choose_on_valid: bool = False


#: tiny-llama's from-scratch budget (configs/ml-100k-tiny.yaml): full fine-tuning, 1,500 steps of 32.
TINY_LLAMA = {"model.base": "tiny-llama", "model.lora": False, "model.sa_init": False, "model.new_token_init": "normal",
              "sft.max_steps": 1500, "sft.batch_size": 32, "sft.lr": 1e-3}
#: The depth table's equal wall-time budget: SFT stops after DEPTH_MINUTES (about half of the 100 demo steps
#: of 16 on 2 CPU cores), at a constant learning rate after 10 warm-up steps (a step-sized schedule would
#: decay at different times in rows of different speed); max_steps only bounds it.
DEPTH_MINUTES = 5.0
DEPTH_BUDGET = {"sft.max_minutes": DEPTH_MINUTES, "sft.max_steps": 100000, "sft.lr_scheduler": "constant_with_warmup",
                "sft.warmup_steps": 10}
#: The baseline every row of a table with ``baselines`` is divided by.
RATIO_TO = "SASRec"
#: The SFT table's budget rule (:attr:`align3gr_kit.config.SFTConfig.fixed_task_a`): equal task-A examples.
FIXED_TASK_A = {"sft.fixed_task_a": True}


TABLES: dict[str, TableSpec] = {
    "token": TableSpec(
        "token", "Token level: dual SCID tokenization", "Align3GR Table 3",
        (("Dual SCID (full)", {}, None, "users and items tokenized, CF features, L_U2I"),
         ("w/o U-I align", {"tokenizer.u2i_align": False}, None, "no L_U2I phase"),
         ("w/o CF", {"tokenizer.use_cf": False}, None, "text features only"),
         ("w/o CF, w/o U-I align", {"tokenizer.use_cf": False, "tokenizer.u2i_align": False}, None,
          "dual SCIDs from text features alone"),
         # labels new with issue 37: the earlier "Item-only SCID" row kept L_U2I on (files measured before it)
         ("Item-only SCID (CF)", {"tokenizer.dual": False, "tokenizer.u2i_align": False}, None,
          "no user SCIDs (no user SCID in prompts, no B2), so no L_U2I either; CF features"),
         ("Item-only SCID (text)", {"tokenizer.dual": False, "tokenizer.u2i_align": False, "tokenizer.use_cf": False},
          None, "item SCIDs from text alone (TIGER's tokenizer)")),
        "first", "rf",
        also=(("w/o CF, w/o U-I align", "Item-only SCID (text)", "what dual SCIDs add on text features"),
              ("w/o U-I align", "Item-only SCID (CF)", "what dual SCIDs add with CF"),
              ("Item-only SCID (CF)", "Item-only SCID (text)", "what CF adds to item-only SCIDs"),
              ("w/o U-I align", "w/o CF, w/o U-I align", "what CF adds to dual SCIDs"),
              ("w/o CF", "w/o CF, w/o U-I align", "what U-I alignment adds on text features"))),
    "sft": TableSpec(
        "sft", "Behaviour level: multi-task SFT", "Align3GR Table 4",
        (("A", {"prompts.tasks": ["A"], "prompts.user_scid_in_prompt": False, **FIXED_TASK_A}, None,
          "sequential prediction only"),
         ("+C1-C3", {"prompts.tasks": A_C_TASKS, "prompts.user_scid_in_prompt": False, **FIXED_TASK_A}, None,
          "asymmetric, intention and preference tasks"),
         ("+B1", {"prompts.tasks": LC_REC_TASKS, "prompts.user_scid_in_prompt": False, **FIXED_TASK_A}, None,
          "item alignment"),
         ("+User SCID", {"prompts.tasks": LC_REC_TASKS, "prompts.user_scid_in_prompt": True, **FIXED_TASK_A}, None,
          "the user SCID in every prompt"),
         ("+B2", {"prompts.tasks": ALL_TASKS, "prompts.user_scid_in_prompt": True, **FIXED_TASK_A}, None,
          "user alignment task")),
        "previous", "sft",
        budget_note=("Every row sees the same task-A examples (`sft.fixed_task_a`: `sft.max_steps` x `sft.batch_size` "
                     "x `sft.grad_accum`, what row A sees), each added task on top in its dataset proportion to A, in "
                     "one pass: rows with more tasks train more steps. Each row file records `task_a_examples` and "
                     "`mix_examples` (all tasks) seen."),
        budget_note_if="sft.fixed_task_a"),
    "dpo": TableSpec(
        "dpo", "Preference level: progressive DPO", "Align3GR Table 5",
        (("SFT", {}, "sft", "the one SFT model every row starts from"),
         ("Softmax-DPO", {"dpo.sp_negatives": "generated", "dpo.sp_progressive": False}, "sp",
          "dpo.n_rejected negatives drawn uniformly from the current policy's own beam, as many rounds as "
          "progressive SP-DPO"),
         ("SP-DPO w/o progression", {"dpo.sp_progressive": False}, "sp",
          "self-play negatives of every difficulty in each of as many rounds as progressive SP-DPO"),
         ("Progressive SP-DPO", {}, "sp", "Easy -> Medium -> Hard"),
         ("RF-DPO w/o progression", {"dpo.rf_progressive": False}, "rf",
          "after progressive SP-DPO; disliked and neutral together in each of as many rounds"),
         ("Progressive RF-DPO", {}, "rf", "after progressive SP-DPO; Easy -> Hard")),
        "previous", "rf",
        also=(("Progressive RF-DPO", "Progressive SP-DPO", "what real feedback adds after self-play"),)),
    "dpo-beta": TableSpec(
        "dpo-beta", "Preference level: the DPO temperature beta", "align3gr-kit (issue 37)",
        tuple((f"beta {b}", {"dpo.beta": b, "dpo.sp_stages": ["easy"]}, "sp",
               f"SP-DPO Easy (one round) at dpo.beta {b}")
              for b in (0.1, 0.5, 1.0, 2.0)),
        "first", "sp", choose_on_valid=True),
    "tsrec": TableSpec(
        "tsrec", "TS-Rec: semantic-aware token initialisation and alignment", "TS-Rec Table 3",
        (("Base", {"model.sa_init": False}, None, "SCID embeddings seeded normal, no TS-Align"),
         ("+SA-Init", {"model.sa_init": True}, None, "SCID embeddings from keyword embeddings"),
         ("+TS-Align", {"model.sa_init": False, "prompts.tasks": ALL_TASKS + ["TS-Align"]}, None,
          "token <-> description task"),
         ("+SA-Init +TS-Align", {"model.sa_init": True, "prompts.tasks": ALL_TASKS + ["TS-Align"]}, None, "both")),
        "first", "sft"),
    "sa-depth": TableSpec(
        "sa-depth", "TS-Rec: SA-Init depth", "TS-Rec (SA-Init on levels 1, 1-2, 1-3)",
        (("Random init", {"model.sa_init": False, "model.new_token_init": "mean_resizing"}, None,
          "every SCID row from transformers' mean resizing"),
         ("SA-Init level 1", {"model.sa_init": True, "model.sa_init_levels": 1, "model.new_token_init": "mean_resizing"},
          None, "level-1 rows from their keywords, the deeper levels mean-resized"),
         ("SA-Init levels 1-2", {"model.sa_init": True, "model.sa_init_levels": 2,
                                 "model.new_token_init": "mean_resizing"}, None, "levels 1 and 2 from their keywords"),
         ("SA-Init levels 1-3", {"model.sa_init": True, "model.sa_init_levels": 3,
                                 "model.new_token_init": "mean_resizing"}, None, "levels 1 to 3 from their keywords")),
        "first", "sft"),
    "backbone": TableSpec(
        "backbone", "What a pretrained LLM brings", "align3gr-kit (issue 9)",
        (("tiny-llama SFT", TINY_LLAMA, "sft", "1.1 M-parameter Llama trained from scratch on the run's text, full fine-tuning"),
         ("Pretrained SFT, random SCID init", {"model.sa_init": False, "model.new_token_init": "mean_resizing"}, "sft",
          "the config's backbone; new SCID rows from transformers' mean resizing"),
         ("Pretrained SFT, SA-Init", {"model.sa_init": True}, "sft", "new SCID rows from their keywords' pretrained rows"),
         ("Pretrained after SP-DPO", {"model.sa_init": True}, "sp", "SA-Init SFT, then Easy -> Medium -> Hard")),
        "first", "sp", baselines=("SASRec",)),
    # Depth pruning at equal wall time (issue 38; SLMRec, arXiv 2405.17890): every row trains for the
    # same DEPTH_MINUTES (sft.max_minutes) at a constant learning rate, so a shallower backbone sees more
    # examples (recorded as train_examples_seen); rows differ in model.keep_layers only. For SmolLM2 (30 layers).
    "depth": TableSpec(
        "depth", "Depth-pruned backbone at equal wall time", "align3gr-kit (issue 38; SLMRec, arXiv 2405.17890)",
        tuple((label, {"model.keep_layers": k, **DEPTH_BUDGET}, "sft", note) for label, k, note in (
            ("30 layers (all)", 30, "every pretrained decoder layer"),
            ("first 15 layers", 15, "layers 0-14"),
            ("first 10 layers", 10, "layers 0-9"),
            ("first 6 layers", 6, "layers 0-5"))),
        "first", "sft", baselines=("SASRec",)),
}


TABLE_NAMES = (*TABLES, "ladder")


#: The papers' direction for each row against its reference row: +1 = the paper reports it better,
#: -1 = worse (the "without" rows of a table compared with its full setting). Rows not named (the
#: reference rows, the kit's own backbone table) have no paper direction. The ladder (Figure 4)
#: rises at every rung.
#: Row labels of committed table files measured before the row was redefined (the token table's
#: "Item-only SCID" kept L_U2I on until issue 37); :data:`PAPER_DIRECTION` still gives their direction.
FORMER_LABELS: dict[str, set[str]] = {"token": {"Item-only SCID"}}

PAPER_DIRECTION: dict[str, dict[str, int]] = {
    # FORMER_LABELS: rows of files measured before a row was renamed, still read as the paper's row
    "token": {"w/o U-I align": -1, "w/o CF": -1, "w/o CF, w/o U-I align": -1, "Item-only SCID (CF)": -1,
              "Item-only SCID (text)": -1, "Item-only SCID": -1},
    "sft": {"+C1-C3": 1, "+B1": 1, "+User SCID": 1, "+B2": 1},
    "dpo": {"Softmax-DPO": 1, "SP-DPO w/o progression": 1, "Progressive SP-DPO": 1, "RF-DPO w/o progression": 1,
            "Progressive RF-DPO": 1},
    "tsrec": {"+SA-Init": 1, "+TS-Align": 1, "+SA-Init +TS-Align": 1},
    "sa-depth": {"SA-Init level 1": 1, "SA-Init levels 1-2": 1, "SA-Init levels 1-3": 1},
    "ladder": {r.label: 1 for r in LADDER[1:]},
}


def table_rungs(name: str, upto: str | None = None) -> list[Rung]:
    """The rows of table ``name`` as :class:`Rung` s ending at ``upto`` (default: the table's own).

    Raises:
        ValueError: an unknown table or ``upto``, or an ``upto`` that leaves no row under study.
    """
    if name not in TABLE_NAMES:
        raise ValueError(f"unknown table {name!r}; choose one of {list(TABLE_NAMES)}")
    if upto is not None and upto not in UPTO:
        raise ValueError(f"--upto must be one of {list(UPTO)}, got {upto!r}")
    if name == "ladder":
        last = UPTO[upto or "rf"]
        return [r for r in LADDER if set(r.stages) <= set(last)]
    spec = TABLES[name]
    upto = upto or spec.default_upto
    order = list(UPTO)
    rungs = []
    for label, overrides, needs, note in spec.rows:
        if needs is not None and order.index(needs) > order.index(upto):
            continue
        rungs.append(Rung(label, dict(overrides), UPTO[needs if needs is not None else upto], note))
    if len(rungs) < 2:
        raise ValueError(f"table {name!r} with --upto {upto}: {len(rungs)} row(s) left, nothing to compare; "
                         f"use --upto {spec.default_upto}")
    return rungs


def row_budget(cfg: RunConfig) -> dict[str, Any]:
    """The :data:`BUDGET_KEYS` values of a row's config."""
    d = cfg.to_dict()
    out = {}
    for key in BUDGET_KEYS:
        section, field_name = key.split(".")
        out[key] = d[section][field_name]
    return out


# On the smoke config the report runs ~20 distinct trainings (every rung and baseline); these
# reductions, the same for every configuration, keep that within a CI budget. They are written into
# benchmark.json and printed by the report; the config's own (or the caller's) values win over them.
SMOKE_REPORT_OVERRIDES: dict[str, Any] = {
    "prompts.max_per_task": 100,
    "sft.max_steps": 10,
    "sft.batch_size": 16,
    "decode.max_eval_users": 40,
    "dpo.max_prompts": 8,
    "dpo.n_rejected": 5,
}


def report_overrides(base: RunConfig, config_path: str, base_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cost reductions this benchmark applies to its runs: :data:`SMOKE_REPORT_OVERRIDES` on a smoke
    config, minus any key the caller set (in the YAML-to-``base`` difference or ``base_overrides``)."""
    if not base.smoke:
        return {}
    own = {**config_diff(base, config_path), **(base_overrides or {})}
    return {k: v for k, v in SMOKE_REPORT_OVERRIDES.items() if k not in own}


def evaluation_split(split: Split, max_users: int) -> Split:
    """``split`` with validation and test cut to their first ``max_users`` rows (0 = unchanged): the
    users the generative models are scored on when ``decode.max_eval_users`` is set
    (:func:`align3gr_kit.evaluate.evaluate`), so that every method in one table counts the same users."""
    if not max_users:
        return split
    return dataclasses.replace(split, valid=split.valid.iloc[:max_users].reset_index(drop=True),
                               test=split.test.iloc[:max_users].reset_index(drop=True))
