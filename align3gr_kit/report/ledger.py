"""Committed row results: a table resumes on another machine from what was measured before.

A table row is one pipeline run, and its result depends on nothing but the config sections its
stages read up to the one it ends with, its seed, and that stage (rows recorded before this key
existed are keyed by the whole config, and are still read: :func:`legacy_row_key`). Run directories
(``runs/``) live on one machine, but a long table on a 2-core CPU outlasts a session, so every
finished row is also written, small, beside the table:

    reports/tables/<dataset>/rows/<chain fingerprint>-s<seed>-<last stage>.json

(``metrics``, ``seconds``, ``run``, ``commit``, ``date``, and ``test_target_ranks``: each test user's
target rank, so that one-seed rows are compared user by user). Before running a row, :func:`find_row` looks
there, and in the committed results file of a full pipeline run (``pipeline-<run>.json``, written by
``report pipeline``) whose config and seed match: its last row of that stage is the same model. A row
found either way is not recomputed; the table names its source. The key leaves out code changes, as
``--resume`` does for stages: delete the file (or pass ``ablate --no-reuse``) to measure it again.

Also here, since the row files and every layer above them speak of the same things: the metric keys
a result holds (:data:`METRIC_KEYS`, :data:`JUDGED_KEYS`), a stage manifest's final metrics
(:func:`manifest_final_metrics`), where a config's tables and rows are kept (:func:`tables_dir`), the
whole-config fingerprint, and how a record is written to JSON (:func:`json_record`).

Layer: the bottom of :mod:`align3gr_kit.report`; imports no other module of it (only ``config``,
``stages.contract`` and ``utils``).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import MANIFEST, chain_fingerprint, read_manifest, stage_dir
from align3gr_kit.utils import git_commit, project_root, read_json, resolve_path, write_json


METRIC_KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
#: What users like in the top-10, by the evaluation judge (:mod:`align3gr_kit.feedback.evaluation`);
#: present only where the dataset has one (generated data, or ratings for a simulator).
JUDGED_KEYS = ("liked_share@10", "mean_rating@10")


ROWS = "rows"


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


def row_key(cfg: RunConfig, last_stage: str) -> str:
    """``<chain fingerprint>-s<seed>-<last stage>``: what a row's result depends on, the config
    sections of its stages up to ``last_stage`` (:func:`~align3gr_kit.stages.contract.chain_fingerprint`),
    so that an SFT row stays found when only the DPO settings change."""
    return f"{chain_fingerprint(cfg, last_stage)}-s{cfg.seed}-{last_stage}"


def legacy_row_key(cfg: RunConfig, last_stage: str) -> str:
    """The key rows were recorded under until 2026-12-01: ``<whole-config fingerprint>-s<seed>-<last
    stage>``; such files are still read (the same config describes the same row)."""
    return f"{config_fingerprint(cfg)}-s{cfg.seed}-{last_stage}"


def row_path(folder: Path, cfg: RunConfig, last_stage: str) -> Path | None:
    """The recorded file of the row ``(cfg, last_stage)`` in ``folder`` (its key, or the legacy key), or None."""
    for key in (row_key(cfg, last_stage), legacy_row_key(cfg, last_stage)):
        path = Path(folder) / ROWS / f"{key}.json"
        if path.exists():
            return path
    return None


def _minutes(date: str | None) -> str | None:
    """A manifest's ISO time (``2026-12-01T12:00:04+00:00``) as the tables print times
    (``2026-12-01 12:00 UTC``); other strings unchanged."""
    try:
        return datetime.fromisoformat(date).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if date else date
    except ValueError:
        return date


def record_row(folder: Path, cfg: RunConfig, last_stage: str, metrics: dict[str, dict[str, float]],
               seconds: float, commit: str | None = None, date: str | None = None,
               machine: str | None = None, ranks: list[int] | None = None,
               ran: dict[str, Any] | None = None) -> Path:
    """Write a finished row's result to ``<folder>/rows/<key>.json`` (atomically) and return the path.

    ``commit``, ``date`` and ``machine``: where and when the row's last stage was measured (its
    manifest's); default this commit, now, unknown. ``ranks``: the final model's per-user test target
    ranks (:func:`align3gr_kit.report.stage_metrics.final_target_ranks`), when the run kept them.
    ``ran``: what the row's training stages did, by stage (:func:`align3gr_kit.report.ablation.stages_ran`)."""
    path = Path(folder) / ROWS / f"{row_key(cfg, last_stage)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, {"key": path.stem, "run": cfg.run_name, "seed": cfg.seed, "last_stage": last_stage,
                             "metrics": metrics, "seconds": seconds, "machine": machine, "commit": commit or git_commit(),
                             "date": _minutes(date) or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                             "test_target_ranks": ranks, "ran": ran or {}})


def attach_ranks(folder: Path, cfg: RunConfig, last_stage: str, ranks: list[int]) -> Path | None:
    """Add per-user test target ranks to a row recorded without them (measured before rows kept them,
    its run still on this machine); the rest of the record is left as measured. None when there is
    no such row file."""
    path = row_path(folder, cfg, last_stage)
    if path is None:
        return None
    rec = read_json(path)
    rec["test_target_ranks"] = [int(r) for r in ranks]
    return write_json(path, rec)


def kept_ranks(doc: dict[str, Any], model: str | None = None) -> list[int] | None:
    """The per-user test target ranks a committed result kept: a row file's (one model), or model
    ``model``'s in a pipeline file (keyed by model); None when it kept none."""
    ranks = doc.get("test_target_ranks")
    return ranks.get(model) if isinstance(ranks, dict) else ranks


def _from_pipeline_file(doc: dict[str, Any], last_stage: str) -> tuple[dict[str, dict[str, float]], list[int] | None] | None:
    """``(metrics, test target ranks)`` of the model ``last_stage`` ends with in a pipeline file; the
    ranks are None in files written before they were kept."""
    rows = [r for r in doc.get("rows", []) if r.get("stage") == last_stage]
    if not rows:
        return None
    row = rows[-1]  # a DPO stage's rows are its sub-stages in order; the stage ends with the last
    out = {}
    for split in ("valid", "test"):
        values = {k: row[f"{split} {k}"] for k in METRIC_KEYS + JUDGED_KEYS if row.get(f"{split} {k}") is not None}
        if any(k not in values for k in METRIC_KEYS):
            return None
        out[split] = values
    return out, kept_ranks(doc, row.get("model"))


def find_row(folder: Path, cfg: RunConfig, last_stage: str) -> dict[str, Any] | None:
    """The committed result of the row ``(cfg, last_stage)`` in ``folder``, or None.

    Returns ``{"metrics": {"valid": {...}, "test": {...}}, "seconds", "source", "run", "ranks", "machine"}``
    (and ``ran``, what its training stages did, for a row file),
    ``source`` naming the file (and the run, commit and date that measured it), ``run`` the name of
    that run, ``ranks`` the per-user test target ranks when the row (or the pipeline file) kept them
    (else None), ``machine`` where it ran (None if unrecorded).
    """
    folder = Path(folder)
    path = row_path(folder, cfg, last_stage)
    if path is not None:
        rec = read_json(path)
        return {"metrics": rec["metrics"], "seconds": rec.get("seconds", 0.0), "ranks": kept_ranks(rec),
                "machine": rec.get("machine"), "run": rec.get("run"), "ran": rec.get("ran") or {},
                "source": f"{project_relative(path)} (run {rec.get('run')}, commit "
                          f"{(rec.get('commit') or 'unknown')[:7]}, {_minutes(rec.get('date'))})"}
    fp = config_fingerprint(cfg)
    for p in sorted(folder.glob("pipeline-*.json")):
        doc = read_json(p)
        if doc.get("fingerprint") != fp or cfg.seed not in doc.get("seeds", []):
            continue
        found = _from_pipeline_file(doc, last_stage)
        if found is not None:
            metrics, ranks = found
            upto = sorted(s for s in doc.get("stage_seconds", {}) if s <= last_stage)
            return {"metrics": metrics, "seconds": round(sum(doc["stage_seconds"][s] for s in upto), 1), "ranks": ranks,
                    "machine": "; ".join(doc.get("machines") or []), "run": doc.get("run_name"),
                    "source": f"{project_relative(p)} (run {doc.get('run_name')}, commit(s) "
                              f"{', '.join(doc.get('commits', []))}, {doc.get('date')})"}
    return None
