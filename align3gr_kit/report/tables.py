"""The papers' ablation tables as commands: each row a config of the same pipeline, N seeds, written
to ``reports/tables/<dataset>/<table>.{json,md,html}`` by the command that measured them.

Tables (``python -m align3gr_kit ablate --table NAME``), each holding the levels not under study at
the full setting of the config, as the papers do:

* ``token``  (Align3GR Table 3): dual vs item-only SCIDs, without CF, without U-I alignment; full
  SFT tasks and the DPO chain after them.
* ``sft``    (Align3GR Table 4): A; +B1; +C1-C3; +user SCID in prompts; +B2; full tokenizer.
* ``dpo``    (Align3GR Table 5): from ONE SFT model shared by every row: Softmax-DPO with
  ``dpo.n_rejected`` negatives drawn from the SFT policy's own beam; SP-DPO without and with
  progression; RF-DPO without and with progression (after progressive SP-DPO).
* ``tsrec``  (TS-Rec Table 3): with/without SA-Init x with/without the TS-Align task.
* ``sa-depth`` (TS-Rec's depth study): random (mean-resizing) SCID rows vs SA-Init on level 1,
  levels 1-2, levels 1-3 (the other levels mean-resized); full tokenizer and SFT tasks, SFT only.
* ``backbone`` (what a pretrained LLM brings): SASRec; tiny-llama (from scratch) SFT; the config's
  pretrained backbone SFT with random (mean-resizing) SCID rows and with SA-Init; after SP-DPO. Every
  row carries its ratio to SASRec, scored on the same users.
* ``ladder`` (Align3GR Figure 4): :data:`align3gr_kit.report.ablation.LADDER`.

``upto`` (``sft``/``sp``/``rf``) stops the chain earlier on small machines: rows that need a later
stage are dropped, and the remaining rows end at that stage. Rows share every identical upstream
stage through ``--resume`` (e.g. the DPO table trains one SFT model).

Spread: every row is the mean and sample standard deviation over seeds. A row is compared with its
reference row (the previous one for cumulative tables, the full setting for "without" tables); a
difference is called a gain or a loss only when it exceeds the spread of the difference,
``sqrt(sd_row^2 + sd_ref^2)`` (the standard deviation of the difference of one run of each). Rows
that ran the same seeds are also judged paired by seed (:func:`seed_paired`: the mean of the per-seed
differences against their standard deviation), since the rows of one seed share its upstream stages. With
one seed the seed spread is unmeasured; where both rows kept their users' target ranks, the step is
judged on the same users instead (:func:`paired_verdicts`: a paired-bootstrap interval of the per-user
difference, marked *(paired)*), else no verdict is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ablation import (
    ALL_TASKS,
    LADDER,
    LC_REC_TASKS,
    METRIC_KEYS,
    SFT_STAGES,
    Rung,
    config_diff,
    results_table,
    run_rungs,
    summarise,
)
from align3gr_kit.utils import git_commit, machine_info, project_root, read_json, resolve_path, write_json

UPTO: dict[str, tuple[str, ...]] = {
    "sft": SFT_STAGES,
    "sp": SFT_STAGES + ("05_sp_dpo",),
    "rf": SFT_STAGES + ("05_sp_dpo", "06_rf_dpo"),
}
#: The metrics a verdict is given on.
VERDICT_KEYS = ("recall@10", "ndcg@10")
#: What users like in the top-10 (the evaluation judge): a column and a verdict of its own in tables
#: whose runs were judged (the DPO table on data with a judge: RF-DPO's aim, issue 10).
LIKED = "liked_share@10"
#: The config fields a row's budget is read from (what its training ran with).
BUDGET_KEYS = ("tokenizer.phase1_max_epochs", "tokenizer.phase2_epochs", "prompts.max_per_task", "sft.max_steps",
               "sft.epochs", "sft.batch_size", "dpo.max_prompts", "dpo.max_steps", "dpo.epochs", "dpo.n_rejected",
               "dpo.sp_beam_width", "dpo.sp_rank_pool", "decode.max_eval_users", "model.base")


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


#: tiny-llama's from-scratch budget (configs/ml-100k-tiny.yaml): full fine-tuning, 1,500 steps of 32.
TINY_LLAMA = {"model.base": "tiny-llama", "model.lora": False, "model.sa_init": False, "model.new_token_init": "normal",
              "sft.max_steps": 1500, "sft.batch_size": 32, "sft.lr": 1e-3}
#: The baseline every row of a table with ``baselines`` is divided by.
RATIO_TO = "SASRec"


TABLES: dict[str, TableSpec] = {
    "token": TableSpec(
        "token", "Token level: dual SCID tokenization", "Align3GR Table 3",
        (("Dual SCID (full)", {}, None, "users and items tokenized, CF features, L_U2I"),
         ("Item-only SCID", {"tokenizer.dual": False}, None, "no user SCIDs: no user SCID in prompts, no B2"),
         ("w/o CF", {"tokenizer.use_cf": False}, None, "text features only"),
         ("w/o U-I align", {"tokenizer.u2i_align": False}, None, "no L_U2I phase")),
        "first", "rf"),
    "sft": TableSpec(
        "sft", "Behaviour level: multi-task SFT", "Align3GR Table 4",
        (("A", {"prompts.tasks": ["A"], "prompts.user_scid_in_prompt": False}, None, "sequential prediction only"),
         ("+B1", {"prompts.tasks": ["A", "B1"], "prompts.user_scid_in_prompt": False}, None, "item alignment"),
         ("+C1-C3", {"prompts.tasks": LC_REC_TASKS, "prompts.user_scid_in_prompt": False}, None,
          "asymmetric, intention and preference tasks"),
         ("+User SCID", {"prompts.tasks": LC_REC_TASKS, "prompts.user_scid_in_prompt": True}, None,
          "the user SCID in every prompt"),
         ("+B2", {"prompts.tasks": ALL_TASKS, "prompts.user_scid_in_prompt": True}, None, "user alignment task")),
        "previous", "sft"),
    "dpo": TableSpec(
        "dpo", "Preference level: progressive DPO", "Align3GR Table 5",
        (("SFT", {}, "sft", "the one SFT model every row starts from"),
         ("Softmax-DPO", {"dpo.sp_negatives": "generated", "dpo.sp_progressive": False}, "sp",
          "dpo.n_rejected negatives drawn uniformly from the SFT policy's own beam, one stage"),
         ("SP-DPO w/o progression", {"dpo.sp_progressive": False}, "sp",
          "self-play negatives of every difficulty, one stage"),
         ("Progressive SP-DPO", {}, "sp", "Easy -> Medium -> Hard"),
         ("RF-DPO w/o progression", {"dpo.rf_progressive": False}, "rf",
          "after progressive SP-DPO; disliked and neutral together, one stage"),
         ("Progressive RF-DPO", {}, "rf", "after progressive SP-DPO; Easy -> Hard")),
        "previous", "rf",
        also=(("Progressive RF-DPO", "Progressive SP-DPO", "what real feedback adds after self-play"),)),
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
}
TABLE_NAMES = (*TABLES, "ladder")

#: The papers' direction for each row against its reference row: +1 = the paper reports it better,
#: -1 = worse (the "without" rows of a table compared with its full setting). Rows not named (the
#: reference rows, the kit's own backbone table) have no paper direction. The ladder (Figure 4)
#: rises at every rung.
PAPER_DIRECTION: dict[str, dict[str, int]] = {
    "token": {"Item-only SCID": -1, "w/o CF": -1, "w/o U-I align": -1},
    "sft": {"+B1": 1, "+C1-C3": 1, "+User SCID": 1, "+B2": 1},
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


def dataset_label(cfg: RunConfig) -> str:
    """The folder name of a config's data under ``reports/tables/`` (``synthetic``, ``ml-100k``,
    ``lcrec-Instruments``)."""
    return f"{cfg.data.dataset}-{cfg.data.name}" if cfg.data.name else cfg.data.dataset


def tables_dir(cfg: RunConfig) -> Path:
    """Where a config's tables go: ``reports/tables/<dataset>/``; a smoke config's (never committed)
    go under ``<runs_dir>/tables/<dataset>/``."""
    root = resolve_path(cfg.runs_dir) / "tables" if cfg.smoke else project_root() / "reports" / "tables"
    return Path(root) / dataset_label(cfg)


def config_fingerprint(cfg: RunConfig) -> str:
    """12 hex digits of the SHA-256 of the config's sections (not its run name or seed)."""
    d = cfg.to_dict()
    payload = {k: v for k, v in d.items() if isinstance(v, dict)}
    payload["smoke"] = d["smoke"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def row_budget(cfg: RunConfig) -> dict[str, Any]:
    """The :data:`BUDGET_KEYS` values of a row's config."""
    d = cfg.to_dict()
    out = {}
    for key in BUDGET_KEYS:
        section, field_name = key.split(".")
        out[key] = d[section][field_name]
    return out


#: The liked-share verdict of a step whose reference (or row) is a classic baseline without a judge.
NOT_JUDGED = "–"


def verdicts(summary: pd.DataFrame, compare: str) -> pd.DataFrame:
    """``summary`` (:func:`~align3gr_kit.report.ablation.summarise`) with, per row, its reference row
    (``vs``), the difference ``d <metric>`` and ``<metric> verdict`` for :data:`VERDICT_KEYS` (and
    :data:`LIKED` when the summary has it): ``gain``/``loss`` when ``|d|`` exceeds
    ``sqrt(sd_row^2 + sd_ref^2)``, ``within spread`` when it does not, ``1 seed`` when either row has
    no measured spread, ``failed`` when either has no value (on the liked share, :data:`NOT_JUDGED`
    when either row is a classic baseline, which has no judge); the first row is the reference."""
    out = summary.copy()
    out["vs"] = ""
    keys = VERDICT_KEYS + ((LIKED,) if LIKED in out else ())
    for k in keys:
        out[f"d {k}"] = float("nan")
        out[f"{k} verdict"] = ""
    for i in range(1, len(out)):
        j = i - 1 if compare == "previous" else 0
        out.loc[i, "vs"] = out.loc[j, "method"]
        for k in keys:
            if k not in out:
                continue
            if k == LIKED and (pd.isna(out.loc[i, k]) or pd.isna(out.loc[j, k])):
                out.loc[i, f"{k} verdict"] = NOT_JUDGED  # a classic baseline has no judge: nothing to compare
                continue
            d = out.loc[i, k] - out.loc[j, k]
            out.loc[i, f"d {k}"] = d
            out.loc[i, f"{k} verdict"] = spread_verdict(d, out.loc[i].get(f"{k} sd"), out.loc[j].get(f"{k} sd"))
    return out


def spread_verdict(d: float | None, sd_row: float | None, sd_ref: float | None) -> str:
    """``gain``/``loss`` when ``|d|`` exceeds ``sqrt(sd_row^2 + sd_ref^2)``, ``within spread`` when it
    does not, ``1 seed`` when either standard deviation is missing, ``failed`` when ``d`` is."""
    if d is None or pd.isna(d):
        return "failed"
    if sd_row is None or sd_ref is None or pd.isna(sd_row) or pd.isna(sd_ref):
        return "1 seed"
    if abs(d) > math.hypot(sd_row, sd_ref):
        return "gain" if d > 0 else "loss"
    return "within spread"


#: Verdicts on the per-seed differences of two rows run with the same seeds (:func:`seed_paired`).
SEED_GAIN, SEED_LOSS, SEED_WITHIN = "gain", "loss", "within spread"


def seed_paired(runs: list[dict[str, Any]], row: str, ref: str, key: str) -> dict[str, Any] | None:
    """The step from ``ref`` to ``row`` on ``key``, paired by seed: the per-seed differences
    ``row_s - ref_s`` over the seeds both rows ran (``runs``: one record per method and seed, as a
    table document's ``runs``). Rows of one seed share that seed's upstream stages (the DPO table's
    rows one SFT model, the SFT table's rows one tokenizer), so pairing removes their variation
    from the step; the spread of the step is then the sample standard deviation of the differences,
    and the rule is the one of :func:`spread_verdict`: a gain or a loss only when the mean difference
    exceeds it in size.

    Returns ``None`` with fewer than 2 shared seeds, else ``{"seeds", "d" (mean), "sd", "up", "down"
    (seeds whose difference is above / below 0), "p" (two-sided one-sample t-test of the differences
    against 0, :func:`scipy.stats.ttest_1samp`; 0 or 1 when they do not vary), "verdict"}``.
    """
    from scipy.stats import ttest_1samp

    values: dict[str, dict[int, float]] = {}
    for r in runs:
        v = r.get(key)
        failed = isinstance(r.get("error"), str) and r["error"]
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and not failed:
            values.setdefault(r["method"], {})[int(r["seed"])] = float(v)
    a, b = values.get(row, {}), values.get(ref, {})
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    p = float(ttest_1samp(diffs, 0.0).pvalue) if sd > 1e-12 else (1.0 if abs(mean) <= 1e-12 else 0.0)
    verdict = (SEED_GAIN if mean > 0 else SEED_LOSS) if abs(mean) > sd else SEED_WITHIN
    return {"seeds": len(seeds), "d": mean, "sd": sd, "up": sum(d > 0 for d in diffs),
            "down": sum(d < 0 for d in diffs), "p": p, "verdict": verdict}


def seed_paired_verdicts(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``summary`` after :func:`verdicts`, with each row's step against its reference (``vs``) also
    judged paired by seed (:func:`table_seed_paired`), where both ran at least 2 of the same seeds:
    ``<metric> paired sd``, ``<metric> paired up`` (e.g. ``"3/3"``), ``<metric> paired p`` and
    ``<metric> paired verdict`` for :data:`VERDICT_KEYS` (and :data:`LIKED` when judged)."""
    out = summary.copy()
    row_of = {method: i for i, method in enumerate(out["method"])}
    steps = table_seed_paired({"rows": out.to_dict("records"), "runs": runs.to_dict("records")})
    for (method, k), res in steps.items():
        i = row_of[method]
        out.loc[i, f"{k} paired sd"] = round(res["sd"], 6)
        out.loc[i, f"{k} paired up"] = f"{res['up']}/{res['seeds']}"
        out.loc[i, f"{k} paired p"] = round(res["p"], 4)
        out.loc[i, f"{k} paired verdict"] = res["verdict"]
    return out


#: One-seed verdicts judged on the same users (:func:`paired_verdicts`).
PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN = "gain (paired)", "loss (paired)", "within user noise"


def paired_verdicts(summary: pd.DataFrame, ranks: dict[str, dict[int, list[int]]], seed: int = 0) -> pd.DataFrame:
    """``summary`` after :func:`verdicts`, with each ``1 seed`` verdict on :data:`VERDICT_KEYS` judged on
    the same users instead, where both rows ran one seed, the same one, and kept their per-user test
    target ranks (``ranks``: ``{method: {seed: ranks}}``): the per-user difference's paired-bootstrap
    95% interval (:func:`align3gr_kit.metrics.paired_bootstrap`) says :data:`PAIRED_GAIN` or
    :data:`PAIRED_LOSS` when it excludes 0, else :data:`PAIRED_WITHIN`; ``<metric> ci low/high`` hold
    the interval and ``recall@10 p`` McNemar's exact p. A seed spread, where measured, is never replaced."""
    from align3gr_kit.metrics import paired_bootstrap, paired_hit_difference, per_user_metric

    out = summary.copy()
    for i in range(1, len(out)):
        a, b = ranks.get(out.loc[i, "vs"], {}), ranks.get(out.loc[i, "method"], {})
        if len(a) != 1 or set(a) != set(b):
            continue
        ra, rb = a[next(iter(a))], b[next(iter(b))]
        if ra is None or rb is None or len(ra) != len(rb) or not len(ra):
            continue
        for k in VERDICT_KEYS:
            if out.loc[i].get(f"{k} verdict") != "1 seed":
                continue
            va, vb = per_user_metric(ra, k), per_user_metric(rb, k)
            if k.startswith("recall@"):  # one bootstrap, plus McNemar's p on the same hits
                res = paired_hit_difference(va > 0, vb > 0, seed=seed)
                low, high = res["ci_low"], res["ci_high"]
                out.loc[i, f"{k} p"] = round(res["p"], 4)
            else:
                _, low, high = paired_bootstrap(va, vb, seed=seed)
            out.loc[i, f"{k} ci low"], out.loc[i, f"{k} ci high"] = round(low, 4), round(high, 4)
            out.loc[i, f"{k} verdict"] = PAIRED_GAIN if low > 0 else PAIRED_LOSS if high < 0 else PAIRED_WITHIN
    return out


def with_ratios(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with ``<metric> / SASRec`` for :data:`VERDICT_KEYS` when it has a SASRec row
    (above 1: ahead of SASRec); unchanged otherwise."""
    if RATIO_TO not in set(summary["method"]):
        return summary
    out = summary.copy()
    ref = out.set_index("method").loc[RATIO_TO]
    for k in VERDICT_KEYS:
        out[f"{k} / {RATIO_TO}"] = out[k] / ref[k] if ref[k] else float("nan")
    return out


def run_table(base: RunConfig, config_path: str, name: str, seeds: list[int], upto: str | None = None,
              out_dir: Path | None = None, base_overrides: dict[str, Any] | None = None,
              reuse: bool = True) -> dict[str, Any]:
    """Run every row of table ``name`` for every seed (papermill runs ``<run_name>-<name>-NN-sS``,
    resuming) and write the table.

    Every finished row is also recorded, small, under ``<out_dir>/rows/`` (committed with the table),
    and a row recorded before, here or in a committed pipeline results file of the same config and
    seed, is read instead of run (:mod:`align3gr_kit.report.ledger`); ``reuse=False`` runs them all.

    Args:
        base: the config (its ``run_name`` prefixes the sub-runs; ``runs_dir`` holds them).
        config_path: the YAML the sub-runs' notebooks load.
        seeds: one run per seed and row.
        upto: ``sft``/``sp``/``rf``, the last stage of the chain (default: the table's).
        out_dir: where the files go (default :func:`tables_dir`).
        base_overrides: the caller's dotted overrides (``--set``), passed on to every run. On a smoke
            config the cheaper settings of
            :data:`~align3gr_kit.report.benchmark.SMOKE_REPORT_OVERRIDES` are added.
    Returns:
        The table document written to ``<out_dir>/<name>.json`` (see :func:`write_table`), plus
        ``files`` (``{"json"|"md"|"html": path}``).
    """
    from align3gr_kit.report.benchmark import report_overrides

    rungs = table_rungs(name, upto)
    reductions = report_overrides(base, config_path, base_overrides)
    base = base.override(reductions)
    base_overrides = {**reductions, **(base_overrides or {})}
    t0 = time.time()
    folder = Path(out_dir or tables_dir(base))
    results = run_rungs(base, config_path, rungs, seeds, name, base_overrides, ledger=folder, reuse=reuse)
    inherited = {**config_diff(base, config_path), **base_overrides}
    runs = results_table(results)
    baselines = () if name == "ladder" else TABLES[name].baselines
    if baselines:  # scored on the users the generative rows are scored on (decode.max_eval_users)
        from align3gr_kit.report.benchmark import classic_baselines

        classic = classic_baselines(base, seeds)
        runs = pd.concat([classic[classic["method"].isin(baselines)], runs], ignore_index=True)
    wall = round(time.time() - t0, 1)
    compare = "previous" if name == "ladder" else TABLES[name].compare
    kept: dict[str, dict[int, list[int]]] = {}
    for r in results:
        if r.ranks is not None and not r.error:
            kept.setdefault(r.label, {})[r.seed] = r.ranks
    summary = verdicts(summarise(runs), compare)
    summary = seed_paired_verdicts(paired_verdicts(summary, kept, seed=seeds[0] if seeds else 0), runs)
    summary = with_ratios(summary)
    notes = {r.label: r.note for r in rungs}
    budgets = {r.label: row_budget(base.override({**inherited, **r.overrides})) for r in rungs}
    rows = []
    for rec in summary.to_dict("records"):
        label = rec["method"]
        rung = next((r for r in rungs if r.label == label), None)
        if rung:
            extra = {"overrides": rung.overrides, "last_stage": rung.last_stage, "note": notes[label],
                     "budget": budgets[label]}
        else:  # a classic baseline (Popularity counts; SASRec trains with tokenizer.sasrec)
            extra = {"overrides": {}, "last_stage": "baseline",
                     "budget": {"tokenizer.sasrec": dataclasses.asdict(base.tokenizer.sasrec)} if label == "SASRec" else {},
                     "note": "full ranking of every item; trained on the run's split, scored on the same users"}
        rows.append({**json_record(rec), **extra})
    doc = {
        "table": name,
        "title": "Ablation ladder" if name == "ladder" else TABLES[name].title,
        "source": "Align3GR Figure 4" if name == "ladder" else TABLES[name].source,
        "dataset": dataset_label(base),
        "config": project_relative(config_path),
        "overrides": base_overrides,
        "fingerprint": config_fingerprint(base),
        "upto": upto or ("rf" if name == "ladder" else TABLES[name].default_upto),
        "compare": compare,
        "seeds": list(seeds),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": wall,
        "machine": machine_info(),
        "smoke": base.smoke,
        "rows": rows,
        "runs": [json_record(r) for r in runs.to_dict("records")],
        "failed": [r for r in runs.to_dict("records") if isinstance(r.get("error"), str) and r["error"]],
        "reused": [{"method": r.label, "seed": r.seed, "source": r.source} for r in results if r.source],
        "machines": [{"method": r.label, "seed": r.seed, "machine": r.machine} for r in results if r.machine],
    }
    paths = write_table(doc, folder)
    return {**doc, "files": {ext: str(path) for ext, path in paths.items()}}


def json_record(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with float NaN (a metric a run did not produce) as ``None``, so the JSON files hold ``null``."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


def project_relative(path: str | Path) -> str:
    """``path`` relative to the project root when inside it (committed files name no home folder)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(project_root()))
    except ValueError:
        return str(path)


def _cell(mean: Any, sd: Any, missing: str = "failed") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return missing
    return f"{mean:.4f}" if sd is None or (isinstance(sd, float) and math.isnan(sd)) else f"{mean:.4f} ± {sd:.4f}"


def _ratio(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def table_markdown(doc: dict[str, Any]) -> str:
    """The markdown of a table document (the ``.md`` file and the BENCHMARKS.md block): a line of
    provenance, the budget, then one row per variant (mean ± sd over seeds, the step against its
    reference row and its verdict). A run's result file (``table: pipeline``) has its own layout
    (:func:`align3gr_kit.report.stage_metrics.pipeline_markdown`)."""
    from align3gr_kit.report.stage_metrics import PIPELINE, pipeline_markdown

    if doc["table"] == PIPELINE:
        return pipeline_markdown(doc)
    seeds = doc["seeds"]
    ratios = any(f"{VERDICT_KEYS[0]} / {RATIO_TO}" in r for r in doc["rows"])
    verdict_keys = judged_keys(doc["rows"])
    liked = LIKED in verdict_keys
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in doc["rows"] if r.get("last_stage") != "baseline"}
    paired = table_seed_paired(doc)
    lines = [
        f"**{doc['title']}** ({doc['source']}) on `{doc['dataset']}`: config `{doc['config']}`"
        + (f" with `{json.dumps(doc['overrides'], sort_keys=True)}`" if doc["overrides"] else "")
        + f", fingerprint `{doc['fingerprint']}`, chain up to `{doc['upto']}`, {len(seeds)} seed(s) {seeds}, "
        f"commit `{(doc['commit'] or 'unknown')[:7]}`, {doc['date']}, wall {doc['wall_seconds']:.0f} s "
        "(this command; stages reused from earlier runs are not counted)"
        + (f" on {doc['machine']}." if doc.get("machine") else "."),
        "",
        "Budget: " + "; ".join(f"`{k}` {v}" for k, v in sorted(json.loads(next(iter(budgets))).items()))
        if len(budgets) == 1 else "Budget: per row in the JSON file (rows differ).",
        "",
        "| variant | seeds | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 |" + (" liked@10 |" if liked else "")
        + " vs | Δ Recall@10 | Δ NDCG@10 |" + (" Δ liked@10 |" if liked else "")
        + f" verdict (R@10 / N@10{' / liked' if liked else ''}) |"
        + (f" paired by seed (R@10 / N@10{' / liked' if liked else ''}) |" if paired else "")
        + (f" R@10 / {RATIO_TO} | N@10 / {RATIO_TO} |" if ratios else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if liked else "") + ("---|" if paired else "")
        + ("---|---|" if ratios else ""),
    ]
    for r in doc["rows"]:
        cells = [_cell(r.get(k), r.get(f"{k} sd")) for k in METRIC_KEYS]
        if liked:  # rows without a judge (the classic baselines) show a dash
            cells.append(_cell(r.get(LIKED), r.get(f"{LIKED} sd"), missing="–"))
        deltas = [("" if r.get(f"d {k}") is None else f"{r[f'd {k}']:+.4f}") for k in verdict_keys]
        verdict = " / ".join(r.get(f"{k} verdict", "") for k in verdict_keys).strip(" /")
        line = (f"| {r['method']} | {r['seeds']} | " + " | ".join(cells)
                + f" | {r.get('vs', '')} | " + " | ".join(deltas) + f" | {verdict} |")
        if paired:
            steps = [paired.get((r["method"], k)) for k in verdict_keys]
            line += " " + (" / ".join(f"{x['verdict']} ({x['up']}/{x['seeds']} up)" if x else "–" for x in steps)
                           if any(steps) else "") + " |"
        if ratios:
            line += "".join(f" {_ratio(r.get(f'{k} / {RATIO_TO}'))} |" for k in VERDICT_KEYS)
        lines.append(line)
    if any(r.get(f"{k} verdict") in (PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN) for r in doc["rows"] for k in verdict_keys):
        lines += ["", "One seed: a verdict marked *(paired)* or *within user noise* compares the two rows' models on "
                      "the same test users: the paired-bootstrap 95% interval of the per-user difference "
                      "(in the JSON, `<metric> ci low/high`, and McNemar's p for Recall@10) excludes 0 or not."]
    if paired:
        lines += ["", "Paired by seed: the rows of one seed share that seed's upstream stages, so a step is also "
                      "judged on its per-seed differences: a gain or a loss when their mean exceeds their standard "
                      "deviation in size (the same one-spread rule), with how many seeds went up; in the JSON, "
                      "`<metric> paired sd/up/p` (p: two-sided one-sample t-test of the differences)."]
    lines += ["", "Rows: " + "; ".join(f"**{r['method']}**: {r['note']}" for r in doc["rows"]) + "."]
    reading = table_reading(doc, paired)
    if reading:
        lines += ["", "Reading beside the paper (written from the numbers above):", ""] + [f"- {x}" for x in reading]
    if doc.get("reused"):
        # real-data rows are read from files committed under reports/; smoke rows from runs/ of this machine
        committed = all(r["source"].startswith("reports/") for r in doc["reused"])
        lines += ["", "Rows measured earlier with the same config and seed, read from "
                  + ("committed results: " if committed else "earlier runs' result files: ")
                  + "; ".join(f"{r['method']} seed {r['seed']}: `{r['source']}`" for r in doc["reused"]) + "."]
    lines += machines_lines(doc)
    if doc["failed"]:
        lines += ["", "Failed runs: " + "; ".join(f"{f['method']} seed {f['seed']}: {f['error']}" for f in doc["failed"])]
    return "\n".join(lines) + "\n"


def machines_lines(doc: dict[str, Any]) -> list[str]:
    """A paragraph naming which rows ran on which machine, when the rows ran on more than one (rows
    reused from another session): under ``model.dtype: auto`` a CPU with bf16 units trains in bf16
    autocast and one without in fp32, so a step between such rows also changes the precision."""
    by_machine: dict[str, list[str]] = {}
    for m in doc.get("machines", []):
        by_machine.setdefault(m["machine"], []).append(f"{m['method']} seed {m['seed']}")
    if len(by_machine) < 2:
        return []
    return ["", "The rows ran on more than one machine (under `model.dtype: auto` a CPU with bf16 units trains "
                "in bf16 autocast, one without in fp32, so a step between rows of different machines also changes "
                "the precision): " + "; ".join(f"{machine}: {', '.join(rows)}" for machine, rows in by_machine.items())
            + "."]


_METRIC_NAMES = {"recall@10": "Recall@10", "ndcg@10": "NDCG@10", LIKED: "liked share@10"}


def _has(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def judged_keys(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The metrics a table's steps are judged on: :data:`VERDICT_KEYS`, plus :data:`LIKED` when some
    row has a liked share (a number, not None or NaN: the classic baselines have no judge)."""
    return VERDICT_KEYS + ((LIKED,) if any(_has(r.get(LIKED)) for r in rows) else ())


def table_seed_paired(doc: dict[str, Any], pairs: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], dict]:
    """``{(row, metric): seed_paired(...)}`` for each row's step against its reference (``vs``), or for
    ``pairs`` of ``(row, reference)``, from the document's per-seed ``runs`` (so a table file written
    before this judgement existed is judged the same way); empty when no step has 2 shared seeds."""
    keys = judged_keys(doc["rows"])
    if pairs is None:
        pairs = [(r["method"], r["vs"]) for r in doc["rows"] if r.get("vs")]
    out = {}
    for row, ref in pairs:
        for k in keys:
            res = seed_paired(doc.get("runs", []), row, ref, k)
            if res is not None:
                out[(row, k)] = res
    return out


def _paired_words(res: dict[str, Any]) -> str:
    """The words of a seed-paired step (:func:`seed_paired`) for the reading."""
    where = "within the spread" if res["verdict"] == SEED_WITHIN else "beyond the spread"
    return (f"paired by seed: sd {res['sd']:.4f}, up in {res['up']} of {res['seeds']} seeds, "
            f"t-test p {res['p']:.2g}, {where}")


def table_reading(doc: dict[str, Any], paired_steps: dict[tuple[str, str], dict] | None = None) -> list[str]:
    """One line per row with a paper direction (:data:`PAPER_DIRECTION`): its step against the
    reference row on each verdict metric, and whether that step goes the paper's way *beyond the
    spread*, against it, or neither, and the same judged paired by seed where the two rows share
    seeds (:func:`seed_paired`); then a count of each. Written from the table file alone, so the
    reading in BENCHMARKS.md and notebook 07 is regenerated with the numbers (never typed by hand).
    ``paired_steps``: :func:`table_seed_paired` of ``doc`` when the caller has it already."""
    directions = PAPER_DIRECTION.get(doc["table"], {})
    keys = judged_keys(doc["rows"])
    buckets = ("the paper's way", "against the paper", "within the spread", "one seed, no spread")
    tally, seed_tally = dict.fromkeys(buckets, 0), dict.fromkeys(buckets, 0)
    if paired_steps is None:
        paired_steps = table_seed_paired(doc)
    lines = []
    for r in doc["rows"]:
        want = directions.get(r["method"])
        if want is None or not r.get("vs"):
            continue
        parts = []
        for k in keys:
            d, verdict = r.get(f"d {k}"), r.get(f"{k} verdict", "")
            if d is None or verdict in ("", "failed", NOT_JUDGED):
                continue
            if verdict in ("gain", "loss", PAIRED_GAIN, PAIRED_LOSS):
                bucket = "the paper's way" if (d > 0) == (want > 0) else "against the paper"
                call = bucket + (", one seed, paired over users" if verdict in (PAIRED_GAIN, PAIRED_LOSS) else "")
            elif verdict in ("within spread", PAIRED_WITHIN):
                bucket = "within the spread"
                call = bucket if verdict == "within spread" else "within the users' noise, one seed"
            else:
                bucket = call = "one seed, no spread"
            res = paired_steps.get((r["method"], k))
            if res is not None:
                call += "; " + _paired_words(res)
            if k == "recall@10":
                tally[bucket] += 1
                if res is not None:
                    seed_tally["within the spread" if res["verdict"] == SEED_WITHIN else
                               "the paper's way" if (res["d"] > 0) == (want > 0) else "against the paper"] += 1
            parts.append(f"{_METRIC_NAMES[k]} {d:+.4f} ({call})")
        if parts:
            lines.append(f"**{r['method']}** vs {r['vs']} (paper: {'higher' if want > 0 else 'lower'}): "
                         + ", ".join(parts) + ".")
    if lines:
        n, ours = sum(tally.values()), tally["the paper's way"]
        n_seed, ours_seed = sum(seed_tally.values()), seed_tally["the paper's way"]
        paired = any(r.get(f"{k} verdict") in (PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN) for r in doc["rows"] for k in keys)
        lines.append(f"On Recall@10, {ours} of {n} steps go the paper's way beyond the spread"
                     + (" (of seeds; with one seed, of users)" if paired else "") + ", "
                     f"{tally['against the paper']} against it, {tally['within the spread']} within the spread"
                     + (f", {tally['one seed, no spread']} with one seed (no spread measured, no verdict)"
                        if tally["one seed, no spread"] else "") + "."
                     + (f" Paired by seed: {ours_seed} of {n_seed} the paper's way beyond the spread, "
                        f"{seed_tally['against the paper']} against it, {seed_tally['within the spread']} within the "
                        "spread." if n_seed else ""))
    spec = TABLES.get(doc["table"])
    by = {r["method"]: r for r in doc["rows"]}
    calls = {"gain": "beyond the spread", "loss": "beyond the spread", "within spread": "within the spread",
             "1 seed": "one seed, no spread"}
    for name, ref, asks in spec.also if spec else ():
        if name not in by or ref not in by:
            continue
        also_paired = table_seed_paired(doc, [(name, ref)])
        parts = []
        for k in keys:
            a, b = by[name].get(k), by[ref].get(k)
            if a is None or b is None or pd.isna(a) or pd.isna(b):
                continue
            call = calls[spread_verdict(a - b, by[name].get(f"{k} sd"), by[ref].get(f"{k} sd"))]
            if (res := also_paired.get((name, k))) is not None:
                call += "; " + _paired_words(res)
            parts.append(f"{_METRIC_NAMES[k]} {a - b:+.4f} ({call})")
        if parts:
            lines.append(f"Also **{name}** vs {ref} ({asks}): " + ", ".join(parts) + ".")
    return lines


def table_figure(doc: dict[str, Any]):
    """A plotly figure: Recall@10 and NDCG@10 (and the liked share, when judged) per variant, bars at
    the mean, error bars one sd."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = [r["method"] for r in doc["rows"]]
    for k in judged_keys(doc["rows"]):
        fig.add_bar(name=k, x=names, y=[r.get(k) for r in doc["rows"]],
                    error_y={"type": "data", "array": [r.get(f"{k} sd") or 0.0 for r in doc["rows"]], "visible": True})
    fig.update_layout(barmode="group", title=f"{doc['title']} ({doc['source']}), {doc['dataset']}, "
                      f"{len(doc['seeds'])} seed(s): mean ± sd", yaxis_title="test metric")
    return fig


def write_table(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``<out_dir>/<table>.json``, ``.md`` (:func:`table_markdown`) and ``.html`` (:func:`table_figure`,
    with ``plotly.min.js`` beside it)."""
    from align3gr_kit.utils import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{doc['table']}.{ext}" for ext in ("json", "md", "html")}
    write_json(paths["json"], doc)
    with atomic_path(paths["md"]) as tmp:
        Path(tmp).write_text(table_markdown(doc))
    with atomic_path(paths["html"]) as tmp:
        # plotly.js once per folder beside the pages (as the stages' figures), so they open offline
        table_figure(doc).write_html(str(tmp), include_plotlyjs="directory", full_html=True)
    return paths


def read_tables(folder: Path) -> dict[str, dict[str, Any]]:
    """``table name -> document`` of every ``<table>.json`` in ``folder`` (empty when there is none)."""
    folder = Path(folder)
    return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def ablate_table_command(name: str, seeds: int = 3, upto: str | None = None) -> str:
    """The command that makes table ``name`` for a config."""
    return (f"python -m align3gr_kit ablate --config <this run's config> --table {name} --seeds {seeds}"
            + (f" --upto {upto}" if upto else ""))


def tables_overview(cfg: RunConfig, folder: Path | None = None) -> str:
    """Markdown of every table found for this config's data (:func:`tables_dir`, or ``folder``), each
    with its provenance line; for a table not made yet, the command that makes it. Reads files only."""
    folder = Path(folder or tables_dir(cfg))
    found = {k: v for k, v in read_tables(folder).items() if v.get("table") in TABLE_NAMES}  # not runs' files
    where = project_relative(folder)
    parts = [f"Tables in `{where}`: {', '.join(found) if found else 'none yet'}."]
    for name in TABLE_NAMES:
        if name in found:
            parts.append(f"### {found[name]['title']}\n\n{table_markdown(found[name])}")
        else:
            parts.append(f"`{name}` not made yet: `{ablate_table_command(name)}`")
    return "\n\n".join(parts)
