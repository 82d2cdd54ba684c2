"""Stage 07: the run's models beside the baselines, and the ablation tables when they exist."""

from __future__ import annotations

from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.report.pipeline_report import benchmark_results, comparison, save_comparison
from align3gr_kit.stages.contract import StageRun


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Popularity, SASRec and the run's final model (test Recall/NDCG, ratio to SASRec), saved
    beside the stage (:func:`~align3gr_kit.report.pipeline_report.read_comparison` reads it back);
    whether the ``ablate`` results exist. Returns the metrics."""
    data = stage.input("00_data")
    try:
        tok = stage.input("01_tokenize")
        summary, ranks = tok.summary, tok.sasrec_ranks
    except FileNotFoundError:
        summary = ranks = None
    table = comparison(cfg, data, summary, ranks)
    save_comparison(stage.dir, table)
    bench = benchmark_results(cfg)
    metrics: dict[str, Any] = {r["method"]: {k: round(float(r[k]), 6) for k in ("recall@10", "ndcg@10",
                                                                               "recall@10 / SASRec")}
                               for r in table.to_dict("records")}
    metrics["ablate_results"] = bool(bench)
    return metrics
