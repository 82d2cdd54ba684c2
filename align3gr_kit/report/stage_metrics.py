"""Recall/NDCG of the full pipeline model after model stage: SFT, each SP-DPO stage, each RF-DPO stage.

Read from one run (nothing recomputed): the SFT stage's manifest, and each DPO stage's history
(:class:`align3gr_kit.dpo.artifacts.DPOArtifacts`), in the order the models trained; each model's
per-user target ranks (:func:`align3gr_kit.evaluate.read_target_ranks`), and the paired steps between
consecutive models on the same users (:func:`paired_steps`).

Layer: a reader of runs, just above :mod:`align3gr_kit.report.ledger`, the only module of
:mod:`align3gr_kit.report` it imports (besides ``config``, ``dpo.artifacts``, ``evaluate``,
``metrics`` and ``stages.contract``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.dpo.artifacts import DPOArtifacts
from align3gr_kit.report.ledger import JUDGED_KEYS, METRIC_KEYS, manifest_final_metrics
from align3gr_kit.stages.contract import MANIFEST, read_manifest, stage_dir


DPO_STAGES = (("05_sp_dpo", "SP-DPO"), ("06_rf_dpo", "RF-DPO"))
# The columns a report prints of :func:`pipeline_stage_metrics`.
TABLE_COLUMNS = ["model", "valid recall@10", "valid ndcg@10", *[f"test {k}" for k in METRIC_KEYS], "test liked_share@10"]


def _row(stage: str, model: str, metrics: dict[str, dict[str, Any]], users: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage, "model": model, "users": users}
    for split in ("valid", "test"):
        for k in METRIC_KEYS + JUDGED_KEYS:
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


def pipeline_target_ranks(cfg: RunConfig, split: str = "test") -> list[tuple[str, list[int] | None]]:
    """``(model, per-user target ranks on split)`` for every trained model of the run, in the order of
    :func:`pipeline_stage_metrics`; ``None`` where the stage kept no ranks (runs before they were kept)."""
    from align3gr_kit.evaluate import read_target_ranks

    out: list[tuple[str, list[int] | None]] = []
    if read_manifest(cfg, "04_sft") is not None:
        out.append(("SFT", read_target_ranks(stage_dir(cfg, "04_sft")).get("SFT", {}).get(split)))
    for stage, label in DPO_STAGES:
        if read_manifest(cfg, stage) is None:
            continue
        kept = read_target_ranks(stage_dir(cfg, stage))
        for entry in DPOArtifacts.load(stage_dir(cfg, stage)).history.get("stages", []):
            out.append((f"{label} {entry['stage']}", kept.get(entry["stage"], {}).get(split)))
    return out


def final_target_ranks(cfg: RunConfig, stage: str, split: str = "test") -> list[int] | None:
    """Per-user target ranks on ``split`` of the model a finished stage ends with (04: the SFT model;
    05/06: the last DPO sub-stage's policy); ``None`` when the stage kept none."""
    if read_manifest(cfg, stage) is None:
        return None
    return folder_target_ranks(stage_dir(cfg, stage), split)


def folder_target_ranks(folder: Path, split: str = "test") -> list[int] | None:
    """:func:`final_target_ranks` of a finished stage's folder (``<run>/<stage>``), of any run."""
    from align3gr_kit.evaluate import read_target_ranks

    kept = read_target_ranks(folder)
    if not kept:
        return None
    if Path(folder).name == "04_sft":
        return kept.get("SFT", {}).get(split)
    entries = DPOArtifacts.load(folder).history.get("stages") or []
    return kept.get(entries[-1]["stage"], {}).get(split) if entries else None


def paired_steps(models: list[tuple[str, list[int] | None]], k: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Each model against the one trained before it, on the same users: Recall@``k`` difference,
    McNemar's p and a paired-bootstrap 95% interval (:func:`align3gr_kit.metrics.paired_hit_difference`);
    pairs where either model kept no ranks are left out."""
    import numpy as np

    from align3gr_kit.metrics import paired_hit_difference

    out = []
    for (name_a, a), (name_b, b) in zip(models, models[1:]):
        if a is None or b is None or len(a) != len(b):
            continue
        hits_a, hits_b = [(np.asarray(r) >= 0) & (np.asarray(r) < k) for r in (a, b)]
        res = paired_hit_difference(hits_a, hits_b, seed=seed)
        out.append({"from": name_a, "to": name_b, "k": k,
                    **{key: (round(v, 4) if isinstance(v, float) else v) for key, v in res.items()}})
    return out


def paired_reading(step: dict[str, Any]) -> str:
    """``gain``/``loss`` beyond user-sampling noise when the 95% interval excludes 0, else ``within noise``."""
    if step["ci_low"] <= 0 <= step["ci_high"]:
        return "within user-sampling noise"
    return ("gain" if step["delta"] > 0 else "loss") + " beyond user-sampling noise"


def paired_markdown(steps: list[dict[str, Any]], intro: str) -> list[str]:
    """Markdown lines for :func:`paired_steps` (empty without steps)."""
    if not steps:
        return []
    k = steps[0].get("k", 10)
    lines = ["", intro + f" (Recall@{k}; McNemar's exact test on the users one model hits alone, paired bootstrap "
                         "95% interval):", "",
             f"| from | to | Recall@{k} difference | 95% interval | hit by 'from' alone | by 'to' alone | p | reading |",
             "|---|---|---|---|---|---|---|---|"]
    for st in steps:
        lines.append(f"| {st['from']} | {st['to']} | {st['delta']:+.4f} | [{st['ci_low']:+.4f}, {st['ci_high']:+.4f}] "
                     f"| {st['only_a']} | {st['only_b']} | {st['p']:.3f} | {paired_reading(st)} |")
    return lines


def pipeline_paired_steps(cfg: RunConfig, seed: int | None = None) -> list[dict[str, Any]]:
    """:func:`paired_steps` of the run's models on the test split (Recall@10), as ``report pipeline``
    and notebook 07 show them."""
    return paired_steps(pipeline_target_ranks(cfg), k=10, seed=cfg.seed if seed is None else seed)
