"""The ablation ladder (paper Figure 4) and the generative baselines, as configs of one pipeline.

Every rung and every generative baseline is the same code with different config overrides, run
as a papermill run (``runner.run_pipeline``) into its own run directory. Runs use ``resume``, so a
stage whose config sections and upstream stages equal another run's is reused rather than
recomputed (e.g. all rungs share ``00_data``; the DPO rungs share tokenization, prompts and SFT).

Each model stage's manifest carries the valid/test metrics of the model it ends with (nested
``metrics["test"]["recall@10"]`` or flat ``metrics["test_recall@10"]``); a rung's result is the
last stage it runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import MANIFEST, get_stage, is_current, read_manifest, stage_dir

METRIC_KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
#: What users like in the top-10, by the evaluation judge (:mod:`align3gr_kit.feedback.evaluation`);
#: present only where the dataset has one (generated data, or ratings for a simulator).
JUDGED_KEYS = ("liked_share@10", "mean_rating@10")
# The columns a report prints of a summary (:func:`summarise`).
SUMMARY_COLUMNS = ["method", "seeds", *METRIC_KEYS, "recall@10 sd", "ndcg@10 sd"]
LC_REC_TASKS = ["A", "B1", "C1-1", "C1-2", "C2", "C3"]
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
    # negatives from the SFT policy's own beam (the paper's baseline), not from the catalogue.
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
        ("+B1", {"prompts.tasks": ["A", "B1"]}, SFT_STAGES, "item alignment task"),
        ("+C1-C3", {"prompts.tasks": LC_REC_TASKS}, SFT_STAGES, "asymmetric, intention, preference tasks"),
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


def manifest_final_metrics(metrics: dict[str, Any], source: str = "a stage manifest") -> dict[str, dict[str, float]]:
    """``{"valid": {...}, "test": {...}}`` from a stage manifest's ``metrics``, in any of the layouts the
    stages write: nested ``{"test": {"recall@10": ..}}``, flat ``"test_recall@10"`` (SFT) or
    ``"final/test/recall@10"`` (the DPO stages' model after their last stage). ``source`` names the file
    in the error raised when a metric is missing."""
    out = {}
    for split in ("valid", "test"):
        nested = metrics.get(split) if isinstance(metrics.get(split), dict) else {}
        values = {}
        for k in METRIC_KEYS + JUDGED_KEYS:  # the last two only when judged
            for v in (nested.get(k), metrics.get(f"{split}_{k}"), metrics.get(f"final/{split}/{k}")):
                if v is not None:
                    values[k] = v
                    break
        missing = [k for k in METRIC_KEYS if k not in values]
        if missing:
            raise KeyError(f"{source}: metrics lack {split} {missing} (looked for '{split}': {{...}}, "
                           f"'{split}_<metric>' and 'final/{split}/<metric>'); re-run the stage")
        out[split] = {k: float(v) for k, v in values.items()}
    return out


def final_metrics(cfg: RunConfig, stage: str) -> dict[str, dict[str, float]]:
    """``{"valid": {...}, "test": {...}}`` of the model a stage ends with (from its manifest)."""
    m = read_manifest(cfg, stage)
    if m is None:
        raise FileNotFoundError(f"{cfg.run_dir / stage}: no manifest; the stage did not finish")
    return manifest_final_metrics(m.get("metrics", {}), str(stage_dir(cfg, stage) / MANIFEST))


def config_diff(cfg: RunConfig, config_path: str) -> dict[str, Any]:
    """Dotted overrides (``{"data.dataset": "ml-100k"}``) that turn the YAML at ``config_path`` into ``cfg``,
    over the config sections only (``run_name``, ``seed``, ``smoke``, ``runs_dir`` travel separately)."""
    yaml_cfg, ours = RunConfig.from_yaml(config_path).to_dict(), cfg.to_dict()
    return {f"{section}.{k}": v for section, values in ours.items() if isinstance(values, dict)
            for k, v in values.items() if yaml_cfg[section][k] != v}


@dataclass
class RungResult:
    """One run of one rung: its label, seed, run name, ``{"valid": {...}, "test": {...}}`` metrics of
    its last stage, wall seconds, and the failing stage's error (empty when it finished)."""

    label: str
    seed: int
    run_name: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    source: str = ""  # where a row measured before was read from (:mod:`align3gr_kit.report.ledger`)
    ranks: list[int] | None = None  # the final model's per-user test target ranks, when kept
    machine: str = ""  # where the last stage ran (:func:`align3gr_kit.utils.machine_info`), when known


def run_rungs(base: RunConfig, config_path: str, rungs: list[Rung], seeds: list[int], prefix: str,
              base_overrides: dict[str, Any] | None = None, kernel_name: str = "python3",
              ledger: Path | None = None, reuse: bool = True) -> list[RungResult]:
    """Run each rung for each seed as its own papermill run (``<base>-<prefix>-NN-sS``), resuming.

    With ``ledger`` (a table's folder), a rung whose result was committed there before
    (:func:`align3gr_kit.report.ledger.find_row`) is read, not run, and every rung that finishes is
    recorded there, so a table outlasting one machine continues on the next; ``reuse=False`` runs
    every rung (and records it).

    The notebooks of every run receive the YAML ``config_path`` plus dotted overrides: first whatever
    makes the YAML equal ``base`` (:func:`config_diff`: a notebook's ``dataset`` parameter, CLI
    ``--set``...), then ``base_overrides``, then the rung's own overrides. ``smoke`` and ``runs_dir``
    come from ``base``, ``seed`` and ``run_name`` from the loop.

    Returns:
        One :class:`RungResult` per (seed, rung), seeds outermost; a failed run carries ``error``.
    """
    from align3gr_kit.report.ledger import attach_ranks, find_row, record_row
    from align3gr_kit.report.stage_metrics import final_target_ranks
    from align3gr_kit.stages.runner import run_pipeline

    inherited = {**config_diff(base, config_path), **(base_overrides or {})}
    results = []
    for seed in seeds:
        for i, rung in enumerate(rungs):
            run_name = f"{base.run_name}-{prefix}-{i:02d}-s{seed}"
            overrides = {**inherited, **rung.overrides}
            cfg = base.override({**overrides, "seed": seed, "run_name": run_name})
            if ledger is not None and reuse and (found := find_row(ledger, cfg, rung.last_stage)) is not None:
                print(f"[{run_name}] {rung.label}: measured before, read from {found['source']}", file=sys.stderr)
                ranks = found.get("ranks")
                if ranks is None:
                    # recorded before rows (and pipeline files) kept ranks, and the run that measured it is
                    # still on this machine: read them there, keep them now
                    ranks = local_ranks(cfg, rung.last_stage, found.get("run"))
                    if ranks is not None:
                        attach_ranks(ledger, cfg, rung.last_stage, ranks)
                results.append(RungResult(rung.label, seed, run_name, found["metrics"], found["seconds"],
                                          source=found["source"], ranks=ranks, machine=found.get("machine") or ""))
                continue
            t0 = time.time()
            res = run_pipeline(cfg, config_path, stages=list(rung.stages), resume=True,
                               overrides=overrides, kernel_name=kernel_name, render=False)
            out = RungResult(rung.label, seed, run_name, seconds=round(time.time() - t0, 1))
            if res["ok"]:
                out.metrics = final_metrics(cfg, rung.last_stage)
                out.ranks = final_target_ranks(cfg, rung.last_stage)
                last = read_manifest(cfg, rung.last_stage) or {}
                out.machine = last.get("machine") or ""
                if ledger is not None:  # the stages' own times (a resumed or copied stage keeps its cost)
                    cost = sum((read_manifest(cfg, s) or {}).get("wall_seconds") or 0.0 for s in rung.stages)
                    record_row(ledger, cfg, rung.last_stage, out.metrics, round(cost, 1),
                               commit=last.get("git_commit"), date=last.get("finished_at"), machine=last.get("machine"),
                               ranks=out.ranks)
            else:
                failed = next(s for s in res["stages"] if s["status"] == "failed")
                out.error = f"{failed['stage']}: {failed['error']} (see {failed['notebook']})"
            results.append(out)
    return results


def local_ranks(cfg: RunConfig, last_stage: str, measured_by: str | None = None) -> list[int] | None:
    """The per-user test target ranks of the row ``(cfg, last_stage)`` from a run on this machine that
    holds it: the row's own run, or ``measured_by`` (the run a committed result names, e.g. the full
    pipeline run whose file the row was read from), each only while that run's stage is current for
    ``cfg``'s config and seed (:func:`~align3gr_kit.stages.contract.is_current`); None otherwise."""
    from align3gr_kit.report.stage_metrics import final_target_ranks

    stage = get_stage(last_stage)
    names = [cfg.run_name] + ([measured_by] if measured_by and measured_by != cfg.run_name else [])
    for name in names:
        run = cfg.override({"run_name": name})
        if is_current(run, stage):
            return final_target_ranks(run, last_stage)
    return None


def results_table(results: list[RungResult], split: str = "test") -> pd.DataFrame:
    """One row per (label, seed) with the split's metrics; failed runs keep their error."""
    rows = []
    for r in results:
        row = {"method": r.label, "seed": r.seed, "run": r.run_name, "seconds": r.seconds}
        if r.source:
            row["source"] = r.source
        row.update(r.metrics.get(split, {}))
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds per method, in the order methods first appear.

    ``table``: one row per (method, seed) with metric columns (NaN for a failed run). Returns one row
    per method: ``method``, ``seeds`` (runs that produced metrics), the metric means, then
    ``"<metric> sd"`` (``ddof=1``, so NaN with a single seed: one run measures no spread). The
    :data:`JUDGED_KEYS` (what users like) come along when some run has them.
    """
    order = list(dict.fromkeys(table["method"]))
    present = [k for k in METRIC_KEYS if k in table]
    present += [k for k in JUDGED_KEYS if k in table and table[k].notna().any()]
    g = table.groupby("method", sort=False)
    if not present:
        return pd.DataFrame({"method": order, "seeds": [0] * len(order)})
    mean = g[present].mean().reindex(order)
    sd = g[present].std(ddof=1).reindex(order).add_suffix(" sd")
    out = pd.concat([mean, sd], axis=1).rename_axis("method").reset_index()
    out.insert(1, "seeds", g[present[0]].count().reindex(order).to_numpy())
    return out


def save_results(table: pd.DataFrame, path: Path) -> Path:
    from align3gr_kit.utils import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
