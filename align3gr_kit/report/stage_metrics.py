"""Recall/NDCG of the full pipeline model after model stage: SFT, each SP-DPO stage, each RF-DPO stage.

Read from one run (nothing recomputed): the SFT stage's manifest, and each DPO stage's history
(:class:`align3gr_kit.dpo.artifacts.DPOArtifacts`), in the order the models trained.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from align3gr_kit.report.ablation import JUDGED_KEYS, METRIC_KEYS, manifest_final_metrics
from align3gr_kit.config import RunConfig
from align3gr_kit.dpo.artifacts import DPOArtifacts
from align3gr_kit.stages.contract import MANIFEST, read_manifest, stage_dir

DPO_STAGES = (("05_sp_dpo", "SP-DPO"), ("06_rf_dpo", "RF-DPO"))
# The columns a report prints of :func:`pipeline_stage_metrics`.
TABLE_COLUMNS = ["model", "valid recall@10", "valid ndcg@10", *[f"test {k}" for k in METRIC_KEYS], "test liked_share@10"]
# What users like in the top-10 (the evaluation judge, :func:`align3gr_kit.feedback.evaluation_oracle`).
LIKED_KEYS = JUDGED_KEYS


def _row(stage: str, model: str, metrics: dict[str, dict[str, Any]], users: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage, "model": model, "users": users}
    for split in ("valid", "test"):
        for k in METRIC_KEYS + LIKED_KEYS:
            v = metrics.get(split, {}).get(k)
            row[f"{split} {k}"] = float(v) if v is not None else float("nan")
    return row


def pipeline_stage_metrics(cfg: RunConfig) -> pd.DataFrame:
    """One row per trained model of ``cfg``'s run, in training order.

    Returns:
        Columns ``stage`` (``04_sft``, ``05_sp_dpo``...), ``model`` (``SFT``, ``SP-DPO easy``...),
        ``users`` (test users evaluated, None when the stage did not record it), then
        ``"valid <metric>"`` and ``"test <metric>"`` for each metric; DPO stages that did not run are
        absent.
    Raises:
        FileNotFoundError: when ``04_sft`` has not finished (the run did not get that far).
    """
    sft = read_manifest(cfg, "04_sft")
    where = str(stage_dir(cfg, "04_sft") / MANIFEST)
    if sft is None:
        raise FileNotFoundError(f"{where}: the run has no finished SFT stage; run stages 00-04 for it first")
    sft_metrics = sft.get("metrics", {})
    users = sft_metrics.get("test_users", (sft_metrics.get("test") or {}).get("users"))
    rows = [_row("04_sft", "SFT", manifest_final_metrics(sft_metrics, where), users)]
    for stage, label in DPO_STAGES:
        if read_manifest(cfg, stage) is None:
            continue
        for entry in DPOArtifacts.load(stage_dir(cfg, stage)).history.get("stages", []):
            metrics = entry.get("metrics") or {}
            rows.append(_row(stage, f"{label} {entry['stage']}", metrics, metrics.get("test", {}).get("users")))
    return pd.DataFrame(rows)
