"""The papers' ablation tables as commands: each row a config of the same pipeline, N seeds, written
to ``reports/tables/<dataset>/<table>.{json,md,html}`` by the command that measured them.

``python -m align3gr_kit ablate --table NAME`` runs :func:`run_table`: the table's rows
(:mod:`align3gr_kit.report.specs`) as papermill runs for every seed (:func:`align3gr_kit.report.ablation.run_rungs`,
rows measured before read from the ledger, :mod:`align3gr_kit.report.ledger`), their summary and
verdicts (:mod:`align3gr_kit.report.statistics`), written as files (:mod:`align3gr_kit.report.table_files`).

Layer: a command, at the top of :mod:`align3gr_kit.report`; imports the layers below it and the
other commands (:mod:`~align3gr_kit.report.ablation`, :mod:`~align3gr_kit.report.benchmark`).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report import benchmark
from align3gr_kit.report.ablation import DPO_STAGES, RungResult, results_table, run_rungs
from align3gr_kit.report.ledger import config_fingerprint, dataset_label, json_record, project_relative, tables_dir
from align3gr_kit.report.specs import TABLES, config_diff, report_overrides, row_budget, table_rungs
from align3gr_kit.report.statistics import paired_verdicts, seed_paired_verdicts, summarise, verdicts, with_ratios
from align3gr_kit.report.table_files import write_table
from align3gr_kit.utils import git_commit, machine_info


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def dpo_summary(rounds: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One seed's DPO stage in a few numbers: its rounds, prompts, steps and examples summed over the
    rounds, and the rounds' mean rejected per example, margins before/after, share of margins up and
    oracle-judge kappa (means over the rounds that recorded them)."""
    def values(key: str) -> list[float]:
        return [r[key] for r in rounds.values() if r.get(key) is not None]

    out: dict[str, Any] = {"rounds": len(rounds)}
    out.update({k: sum(values(k)) for k in ("prompts", "steps", "n_examples")})
    out.update({k: _mean(values(k)) for k in ("mean_rejected", "margin_before", "margin_after", "margin_up_share",
                                              "judge_kappa")})
    return out


def row_training(results: list[RungResult], label: str, stages: tuple[str, ...]) -> dict[str, Any]:
    """What row ``label`` trained and how it did on validation, over its seeds: ``dpo`` = the mean over
    seeds of :func:`dpo_summary` of the row's last DPO stage (with that stage's ``stage`` name and its
    round names; absent for a row without a DPO stage or whose runs recorded no rounds), and ``valid
    <metric>`` = the validation means (what a hyperparameter is chosen on, e.g. the ``dpo-beta`` table)."""
    runs = [r for r in results if r.label == label and not r.error]
    out: dict[str, Any] = {}
    for k in ("recall@10", "ndcg@10"):
        vals = [r.metrics["valid"][k] for r in runs if r.metrics.get("valid", {}).get(k) is not None]
        if vals:
            out[f"valid {k}"] = _mean(vals)
    stage = next((s for s in reversed(stages) if s in DPO_STAGES), None)
    per_seed = [dpo_summary(r.ran[stage]["rounds"]) for r in runs if stage and r.ran.get(stage, {}).get("rounds")]
    if per_seed:
        keys = [k for k in per_seed[0] if all(p.get(k) is not None for p in per_seed)]
        names = list(next(r.ran[stage]["rounds"] for r in runs if r.ran.get(stage, {}).get("rounds")))
        out["dpo"] = {"stage": stage, "seeds": len(per_seed), "round_names": names,
                      **{k: _mean([p[k] for p in per_seed]) for k in keys}}
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
        out_dir: where the files go (default :func:`~align3gr_kit.report.ledger.tables_dir`).
        base_overrides: the caller's dotted overrides (``--set``), passed on to every run. On a smoke
            config the cheaper settings of
            :data:`~align3gr_kit.report.specs.SMOKE_REPORT_OVERRIDES` are added.
    Returns:
        The table document written to ``<out_dir>/<name>.json``
        (see :func:`~align3gr_kit.report.table_files.write_table`), plus ``files``
        (``{"json"|"md"|"html": path}``).
    """
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
        classic = benchmark.classic_baselines(base, seeds)
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
                     "budget": budgets[label], **row_training(results, rung.label, rung.stages)}
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
