"""What stage 07 shows for one run: the run's own models beside the classic baselines, and the
ablation tables when the ``ablate`` command has made them.

The demo's report does not retrain anything: popularity is counted, SASRec is the collaborative
encoder stage 01 trained on the same split (the same model ``baseline sasrec`` trains; trained here
only when stage 01 used given CF embeddings or none), and every Align3GR row is read from the
run's own stage metrics. The ablation ladder and the baseline table of ``ablate`` are read from
``reports/<run_name>/benchmark.json`` when that file exists.

Layer: a writer (stage 07's tables); imports :mod:`~align3gr_kit.report.ledger`,
:mod:`~align3gr_kit.report.reading`, :mod:`~align3gr_kit.report.specs`,
:mod:`~align3gr_kit.report.stage_metrics` and :mod:`~align3gr_kit.report.statistics` of
:mod:`align3gr_kit.report`, nothing that runs a pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ledger import METRIC_KEYS
from align3gr_kit.report.reading import FULL, POPULARITY, REFERENCE
from align3gr_kit.report.specs import evaluation_split
from align3gr_kit.report.stage_metrics import pipeline_stage_metrics
from align3gr_kit.stages.contract import read_manifest, stage_dir
from align3gr_kit.report.statistics import with_ratios
from align3gr_kit.utils import project_root, read_json, write_json

BENCHMARK = "benchmark.json"
COMPARISON = "comparison.json"


def ablate_command(cfg: RunConfig) -> str:
    """The command that makes the ladder and the baselines table this report reads."""
    return (f"python -m align3gr_kit ablate --config <this run's config> --run-name {cfg.run_name} "
            "--baselines --ladder [--seeds 3]")


def benchmark_results(cfg: RunConfig, reports_dir: Path | None = None) -> dict[str, Any] | None:
    """The ``ablate`` results of this run name (``reports/<run_name>/benchmark.json``), or None."""
    path = Path(reports_dir or project_root() / "reports") / cfg.run_name / BENCHMARK
    return read_json(path) if path.exists() else None


def baseline_rows(cfg: RunConfig, data, tokenize_summary: dict[str, Any] | None,
                  sasrec_ranks: dict[str, Any] | None = None) -> pd.DataFrame:
    """Popularity and SASRec, test metrics (full ranking) on the test users the generative models are
    scored on: all of them, or the first ``decode.max_eval_users`` (the same rows
    :func:`align3gr_kit.evaluate.evaluate` takes), so that every ratio compares the same users.
    ``sasrec_ranks``: stage 01's per-row SASRec ranks (:class:`~align3gr_kit.tokenizer.artifacts.TokenizeArtifacts`)."""
    from align3gr_kit.baselines import run_popularity_baseline, run_sasrec_baseline
    from align3gr_kit.metrics import metrics_from_ranks

    n = cfg.decode.max_eval_users
    split = evaluation_split(data.split, n)
    users = f"first {len(split.test):,} test users" if n else "all test users"
    pop = run_popularity_baseline(cfg, data.dataset, split)["test"]
    sasrec = (tokenize_summary or {}).get("sasrec") or {}
    if sasrec_ranks and "test" in sasrec_ranks:  # stage 01's SASRec, each user's rank kept: the same users
        test = metrics_from_ranks(sasrec_ranks["test"][: len(split.test)])
        source = f"stage 01's collaborative encoder; {users}"
    elif sasrec and not n:
        test, source = sasrec["test"], f"stage 01's collaborative encoder; {users}"
    else:  # given CF embeddings, or a stage 01 that kept no ranks: train it here
        test = run_sasrec_baseline(cfg, data.dataset, split, progress=False)["test"]
        source = f"trained here; {users}"
    return pd.DataFrame([{"method": "Popularity", "source": f"training counts; {users}", **{k: pop[k] for k in METRIC_KEYS}},
                         {"method": "SASRec", "source": source, **{k: test[k] for k in METRIC_KEYS}}])


def full_model_row(cfg: RunConfig) -> pd.DataFrame:
    """``Align3GR (full)``: the last model the run trained (SFT, or the last DPO sub-stage), test
    metrics, its stage in ``source``; empty before stage 04."""
    try:
        stages = pipeline_stage_metrics(cfg)
    except FileNotFoundError:
        return pd.DataFrame(columns=["method", "source", *METRIC_KEYS])
    last = stages.iloc[-1]
    return pd.DataFrame([{"method": FULL, "source": f"{last.stage} ({last.model})",
                          **{k: last[f"test {k}"] for k in METRIC_KEYS + ("liked_share@10",)}}])


def comparison(cfg: RunConfig, data, tokenize_summary: dict[str, Any] | None,
               sasrec_ranks: dict[str, Any] | None = None) -> pd.DataFrame:
    """Popularity, SASRec and the run's final model, with each row's ratio to SASRec on Recall@10 and
    NDCG@10 (above 1: better than SASRec; :func:`align3gr_kit.report.statistics.with_ratios`)."""
    rows = [baseline_rows(cfg, data, tokenize_summary, sasrec_ranks), full_model_row(cfg)]
    return with_ratios(pd.concat(rows, ignore_index=True))


def save_comparison(folder: str | Path, table: pd.DataFrame) -> Path:
    return write_json(Path(folder) / COMPARISON, table.to_dict("records"))


def read_comparison(folder: str | Path) -> pd.DataFrame:
    """The table :func:`save_comparison` wrote."""
    return pd.DataFrame(read_json(Path(folder) / COMPARISON))


#: The columns of :func:`summary_table`, with the headers ``summary.md`` shows.
SUMMARY_COLUMNS = {"model": "model", "recall@10": "test Recall@10", "ndcg@10": "test NDCG@10",
                   "liked_share@10": "liked share@10", "recall@10 / SASRec": "Recall@10 / SASRec",
                   "stage": "stage", "stage seconds": "stage wall time (s)"}


def summary_table(cfg: RunConfig) -> pd.DataFrame:
    """One row per model of ``cfg``'s run, read from its finished stages (nothing recomputed): Popularity
    and SASRec from stage 07's comparison (on the users the run's models are scored on), then every model
    the run trained (:func:`~align3gr_kit.report.stage_metrics.pipeline_stage_metrics`: SFT, each SP-DPO
    and RF-DPO stage); test ``recall@10``, ``ndcg@10``, ``liked_share@10``, ``recall@10 / SASRec`` (when
    the SASRec row exists), the ``stage`` that trained it and that stage's wall time (``stage seconds``).
    Empty before stage 04 and without stage 07."""
    rows: list[dict[str, Any]] = []
    if read_manifest(cfg, "07_report") is not None and (stage_dir(cfg, "07_report") / COMPARISON).exists():
        rows += [{"model": r["method"], "stage": "01_tokenize" if r["method"] == REFERENCE else "",
                  **{k: r.get(k) for k in ("recall@10", "ndcg@10", "liked_share@10")}}
                 for r in read_comparison(stage_dir(cfg, "07_report")).to_dict("records")
                 if r["method"] in (POPULARITY, REFERENCE)]
    try:
        stages = pipeline_stage_metrics(cfg)
    except FileNotFoundError:
        stages = pd.DataFrame(columns=["stage", "model"])
    rows += [{"model": r["model"], "stage": r["stage"],
              **{k: r.get(f"test {k}") for k in ("recall@10", "ndcg@10", "liked_share@10")}}
             for r in stages.to_dict("records")]
    if not rows:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    table = pd.DataFrame(rows).rename(columns={"model": "method"})
    table = with_ratios(table).rename(columns={"method": "model"})
    walls = {s: (read_manifest(cfg, s) or {}).get("wall_seconds") for s in set(table["stage"]) if s}
    table["stage seconds"] = table["stage"].map(walls)
    return table.reindex(columns=list(SUMMARY_COLUMNS))


def summary_markdown(cfg: RunConfig) -> list[str]:
    """:func:`summary_table` as the lines of a Markdown table (4 decimals, ``-`` where a value does not
    apply), under a heading; one sentence instead when the run has no model yet."""
    table = summary_table(cfg)
    if table.empty:
        return ["## Models", "", "No model yet: the run has not finished stage 04 (SFT)."]
    lines = ["## Models", "", "Test split; Popularity and SASRec as stage 07 scored them on the same users; "
             "the stage time is the whole stage's (every model it trained).", "",
             "| " + " | ".join(SUMMARY_COLUMNS.values()) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in table.to_dict("records"):
        cells = ["-" if v is None or v == "" or (isinstance(v, float) and v != v) else
                 f"{v:.4f}" if isinstance(v, float) and k != "stage seconds" else
                 f"{v:.1f}" if isinstance(v, float) else str(v) for k, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
