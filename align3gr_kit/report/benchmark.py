"""One table of every method under the shared protocol, and the ladder, for one config and N seeds.

Non-generative baselines (popularity, SASRec) run in-process on the run's split; the generative
ones (TIGER-style, LC-Rec-style, the full Align3GR pipeline) and the ladder rungs are papermill runs
of the same notebooks with config overrides (:mod:`align3gr_kit.report.ablation`).

Layer: a command, at the top of :mod:`align3gr_kit.report`; imports
:mod:`~align3gr_kit.report.ablation`, :mod:`~align3gr_kit.report.ledger`,
:mod:`~align3gr_kit.report.specs` and :mod:`~align3gr_kit.report.statistics`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ablation import results_table, run_rungs, save_results
from align3gr_kit.report.ledger import METRIC_KEYS
from align3gr_kit.report.specs import GENERATIVE_BASELINES, LADDER, evaluation_split, report_overrides
from align3gr_kit.report.statistics import summarise
from align3gr_kit.utils import project_root, write_json


def classic_baselines(base: RunConfig, seeds: list[int]) -> pd.DataFrame:
    """Popularity and SASRec on the config's data, one row per (method, seed), test metrics.

    Both train on the full training split; they are scored on the same users as the generative
    models (all, or the first ``decode.max_eval_users``).
    """
    from align3gr_kit.baselines import run_popularity_baseline, run_sasrec_baseline
    from align3gr_kit.stages.contract import stage_artifacts

    rows = []
    for seed in seeds:
        cfg = base.override({"seed": seed, "run_name": f"{base.run_name}-baselines-s{seed}"})
        data = stage_artifacts(cfg, "00_data")
        ds, split = data.dataset, data.split
        split = evaluation_split(split, cfg.decode.max_eval_users)
        for name, fn in (("Popularity", run_popularity_baseline), ("SASRec", run_sasrec_baseline)):
            t0 = time.time()
            res = fn(cfg, ds, split)
            rows.append({"method": name, "seed": seed, "run": cfg.run_name, "seconds": round(time.time() - t0, 1),
                         **{k: res["test"][k] for k in METRIC_KEYS}})
    return pd.DataFrame(rows)


def _failed(table: pd.DataFrame) -> list[dict[str, Any]]:
    if "error" not in table:
        return []
    bad = table[table["error"].fillna("") != ""]
    return bad[["method", "seed", "error"]].to_dict("records")


def run_benchmark(base: RunConfig, config_path: str, seeds: list[int], ladder: bool = True,
                  baselines: bool = True, out_dir: Path | None = None,
                  base_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the baselines and/or the ladder, save CSVs and a JSON summary in ``out_dir``
    (default ``reports/<run_name>/``).

    Args:
        base: the run's config (its ``run_name`` prefixes every sub-run: ``<run_name>-ladder-NN-sS``,
            ``<run_name>-baseline-NN-sS``, ``<run_name>-baselines-sS``; its ``runs_dir`` holds them).
        config_path: the YAML the sub-runs' notebooks load.
        seeds: one run per seed and configuration.
        base_overrides: the caller's own dotted overrides of the YAML, passed on to every sub-run.
            On a smoke config :func:`~align3gr_kit.report.specs.report_overrides` adds cheaper settings
            for every run (and the classic baselines are scored on the same users).
    Returns:
        ``{"seeds", "out_dir", "smoke_reductions", "baselines": [...], "ratio_vs_sasrec": {...}, "full_runs": [run dirs],
        "ladder": [...], "failed": [...]}`` (summaries: mean and sd over seeds per method, as records).
        Files: ``baselines_runs.csv``, ``baselines.csv``, ``ladder_runs.csv``, ``ladder.csv``, ``benchmark.json``.
    """
    out_dir = Path(out_dir or project_root() / "reports" / base.run_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    reductions = report_overrides(base, config_path, base_overrides)
    base = base.override(reductions)
    base_overrides = {**reductions, **(base_overrides or {})}
    result: dict[str, Any] = {"seeds": seeds, "out_dir": str(out_dir), "smoke_reductions": reductions, "failed": []}
    if baselines:
        classic = classic_baselines(base, seeds)
        gen_results = run_rungs(base, config_path, GENERATIVE_BASELINES, seeds, "baseline", base_overrides)
        table = pd.concat([classic, results_table(gen_results)], ignore_index=True)
        save_results(table, out_dir / "baselines_runs.csv")
        summary = summarise(table)
        save_results(summary, out_dir / "baselines.csv")
        result["baselines"] = summary.to_dict("records")
        result["ratio_vs_sasrec"] = ratio_vs(summary, "Align3GR (full)", "SASRec")
        result["full_runs"] = [str(base.override({"run_name": r.run_name}).run_dir)
                               for r in gen_results if r.label == "Align3GR (full)" and not r.error]
        result["failed"] += _failed(table)
    if ladder:
        table = results_table(run_rungs(base, config_path, LADDER, seeds, "ladder", base_overrides))
        save_results(table, out_dir / "ladder_runs.csv")
        summary = summarise(table)
        save_results(summary, out_dir / "ladder.csv")
        result["ladder"] = summary.to_dict("records")
        result["failed"] += _failed(table)
    write_json(out_dir / "benchmark.json", result)
    return result


def ratio_vs(summary: pd.DataFrame, method: str, reference: str) -> dict[str, float | None]:
    """``method / reference`` for Recall@10 and NDCG@10 (None when either is missing or zero)."""
    idx = summary.set_index("method")
    out: dict[str, float | None] = {}
    for k in ("recall@10", "ndcg@10"):
        try:
            a, b = float(idx.loc[method, k]), float(idx.loc[reference, k])
        except (KeyError, TypeError, ValueError):
            out[k] = None
            continue
        out[k] = round(a / b, 4) if b else None
    return out


def report_metrics(bench: dict[str, Any], keys: tuple[str, ...] = ("recall@10", "ndcg@10")) -> dict[str, Any]:
    """The numbers the report stage keeps in its manifest: ratios to SASRec, and per method/rung the
    mean test ``keys`` over seeds (NaN means dropped), plus how many runs failed."""
    out: dict[str, Any] = {"seeds": len(bench.get("seeds", [])), "failed_runs": len(bench.get("failed", []))}
    if "ratio_vs_sasrec" in bench:
        out["ratio_vs_sasrec"] = bench["ratio_vs_sasrec"]
    for part in ("baselines", "ladder"):
        if part in bench:
            out[part] = {r["method"]: {k: round(float(r[k]), 6) for k in keys if k in r and not pd.isna(r[k])}
                         for r in bench[part]}
    return out


def full_run_config(base: RunConfig, bench: dict[str, Any]) -> RunConfig:
    """The config of the full-pipeline run (first seed) that :func:`run_benchmark` ran; a clear error
    when it failed or the baselines were not run."""
    runs = bench.get("full_runs")
    if not runs:
        failed = [f for f in bench.get("failed", []) if f["method"] == "Align3GR (full)"]
        why = f"it failed: {failed[0]['error']}" if failed else "the baselines were not run (baselines=False)"
        raise FileNotFoundError(f"no full Align3GR run to read stage metrics from: {why}")
    return base.override({"run_name": Path(runs[0]).name})
