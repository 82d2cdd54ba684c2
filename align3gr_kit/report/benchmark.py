"""One table of every method under the shared protocol, and the ladder, for one config and N seeds.

Non-generative baselines (popularity, SASRec) run in-process on the run's split; the generative
ones (TIGER-style, LC-Rec-style, the full Align3GR pipeline) and the ladder rungs are papermill runs
of the same notebooks with config overrides (:mod:`align3gr_kit.report.ablation`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ablation import (
    GENERATIVE_BASELINES,
    LADDER,
    METRIC_KEYS,
    results_table,
    run_rungs,
    save_results,
    summarise,
)
from align3gr_kit.utils import project_root, write_json


def classic_baselines(base: RunConfig, seeds: list[int]) -> pd.DataFrame:
    """Popularity and SASRec on the config's data, one row per (method, seed), test metrics."""
    from align3gr_kit.baselines import run_popularity_baseline, run_sasrec_baseline
    from align3gr_kit.data.stage import prepare_data

    rows = []
    for seed in seeds:
        cfg = base.override({"seed": seed, "run_name": f"{base.run_name}-baselines-s{seed}"})
        ds, split = prepare_data(cfg)
        for name, fn in (("Popularity", run_popularity_baseline), ("SASRec", run_sasrec_baseline)):
            t0 = time.time()
            res = fn(cfg, ds, split)
            rows.append({"method": name, "seed": seed, "run": cfg.run_name, "seconds": round(time.time() - t0, 1),
                         **{k: res["test"][k] for k in METRIC_KEYS}})
    return pd.DataFrame(rows)


def run_benchmark(base: RunConfig, config_path: str, seeds: list[int], ladder: bool = True,
                  baselines: bool = True, out_dir: Path | None = None,
                  base_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the baselines and/or the ladder, save CSVs and a JSON summary under ``reports/<run_name>/``.

    Returns ``{"baselines": [...], "ladder": [...], "ratio_vs_sasrec": {...}, "out_dir": str}``
    (summaries: mean and sd over seeds per method).
    """
    out_dir = Path(out_dir or project_root() / "reports" / base.run_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"seeds": seeds, "out_dir": str(out_dir)}
    if baselines:
        classic = classic_baselines(base, seeds)
        generative = results_table(run_rungs(base, config_path, GENERATIVE_BASELINES, seeds, "baseline", base_overrides))
        table = pd.concat([classic, generative], ignore_index=True)
        save_results(table, out_dir / "baselines_runs.csv")
        summary = summarise(table)
        save_results(summary, out_dir / "baselines.csv")
        result["baselines"] = summary.to_dict("records")
        result["ratio_vs_sasrec"] = ratio_vs(summary, "Align3GR (full)", "SASRec")
        failed = table[table.get("error", pd.Series(dtype=str)).fillna("") != ""] if "error" in table else table.iloc[:0]
        result["failed"] = failed[["method", "seed", "error"]].to_dict("records") if len(failed) else []
    if ladder:
        table = results_table(run_rungs(base, config_path, LADDER, seeds, "ladder", base_overrides))
        save_results(table, out_dir / "ladder_runs.csv")
        summary = summarise(table)
        save_results(summary, out_dir / "ladder.csv")
        result["ladder"] = summary.to_dict("records")
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
