"""Recall/NDCG of the full pipeline model after model stage: SFT, each SP-DPO stage, each RF-DPO stage.

Read from one run directory (nothing recomputed): ``04_sft/manifest.json`` for the SFT model, and
``05_sp_dpo/history.json`` / ``06_rf_dpo/history.json`` (written by
:func:`align3gr_kit.dpo.progressive.run_progressive`: ``{"stages": [{"stage", "metrics": {split: {...}}}]}``)
for the DPO stages, in the order they trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.report.ablation import METRIC_KEYS, manifest_final_metrics
from align3gr_kit.utils import read_json

DPO_STAGES = (("05_sp_dpo", "SP-DPO"), ("06_rf_dpo", "RF-DPO"))
# The columns a report prints of :func:`pipeline_stage_metrics`.
TABLE_COLUMNS = ["model", "valid recall@10", "valid ndcg@10", *[f"test {k}" for k in METRIC_KEYS]]


def _row(stage: str, model: str, metrics: dict[str, dict[str, Any]], users: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage, "model": model, "users": users}
    for split in ("valid", "test"):
        for k in METRIC_KEYS:
            v = metrics.get(split, {}).get(k)
            row[f"{split} {k}"] = float(v) if v is not None else float("nan")
    return row


def pipeline_stage_metrics(run_dir: str | Path) -> pd.DataFrame:
    """One row per trained model of a run, in training order.

    Args:
        run_dir: ``<runs_dir>/<run_name>`` of a run that went at least through ``04_sft``.
    Returns:
        Columns ``stage`` (``04_sft``, ``05_sp_dpo``...), ``model`` (``SFT``, ``SP-DPO easy``...),
        ``users`` (test users evaluated, None when the stage did not record it), then
        ``"valid <metric>"`` and ``"test <metric>"`` for each metric; DPO stages that did not run are
        absent.
    Raises:
        FileNotFoundError: when ``04_sft`` has no manifest (the run did not get that far).
    """
    run_dir = Path(run_dir)
    sft = run_dir / "04_sft" / "manifest.json"
    if not sft.exists():
        raise FileNotFoundError(f"{sft}: the run has no finished SFT stage; run stages 00-04 for it first")
    sft_metrics = read_json(sft).get("metrics", {})
    users = sft_metrics.get("test_users", (sft_metrics.get("test") or {}).get("users"))
    rows = [_row("04_sft", "SFT", manifest_final_metrics(sft_metrics, str(sft)), users)]
    for stage, label in DPO_STAGES:
        folder = run_dir / stage
        if not (folder / "manifest.json").exists():
            continue
        history = folder / "history.json"
        if not history.exists():
            raise FileNotFoundError(f"{history}: {stage} finished without its history.json; re-run {stage}")
        for entry in read_json(history).get("stages", []):
            metrics = entry.get("metrics") or {}
            rows.append(_row(stage, f"{label} {entry['stage']}", metrics, metrics.get("test", {}).get("users")))
    return pd.DataFrame(rows)
