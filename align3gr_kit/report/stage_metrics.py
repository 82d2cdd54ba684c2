"""Recall/NDCG of the full pipeline model after model stage: SFT, each SP-DPO stage, each RF-DPO stage.

Read from one run (nothing recomputed): the SFT stage's manifest, and each DPO stage's history
(:class:`align3gr_kit.dpo.artifacts.DPOArtifacts`), in the order the models trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.report.ablation import JUDGED_KEYS, METRIC_KEYS, config_diff, manifest_final_metrics
from align3gr_kit.config import RunConfig
from align3gr_kit.dpo.artifacts import DPOArtifacts
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


#: ``table`` of a run's result file (beside the ablation tables, ``reports/tables/<dataset>/``).
PIPELINE = "pipeline"


def pipeline_document(cfg: RunConfig, config_path: str | Path) -> dict[str, Any] | None:
    """A finished run's results as a small file for ``reports/tables/<dataset>/pipeline-<run>.json``:
    every trained model's valid/test metrics in training order (:func:`pipeline_stage_metrics`) and
    per-user test target ranks (:func:`pipeline_target_ranks`), the
    baselines on the same users when stage 07 ran, each stage's wall time and the commit each stage
    ran at. ``None`` before ``04_sft`` finished. Read from the run folder only (nothing recomputed):
    the settings are those the run's last stage recorded, with ``overrides`` saying how they differ from
    the YAML at ``config_path`` as it is now."""
    from align3gr_kit.report.pipeline_report import COMPARISON, read_comparison
    from align3gr_kit.report.tables import config_fingerprint, dataset_label, json_record, project_relative, row_budget
    from align3gr_kit.stages.contract import STAGES

    manifests = {s.name: m for s in STAGES if (m := read_manifest(cfg, s.name))}
    if "04_sft" not in manifests:
        return None
    # the settings it ran with, and how they differ from the YAML as it is now: the last stage's manifest
    # (an earlier stage may be a copy of another run's identical stage, whose settings differ in fields
    # that stage never read, e.g. a 05_sp_dpo copied from a run with other RF settings)
    last = [s.name for s in STAGES if s.name in manifests][-1]
    ran = RunConfig.from_dict(manifests[last]["parameters"], source=str(stage_dir(cfg, last) / MANIFEST),
                              recorded=True)
    overrides = config_diff(ran, config_path)
    rows = pipeline_stage_metrics(cfg).to_dict("records")
    models = pipeline_target_ranks(cfg)
    baselines = []
    if "07_report" in manifests and (stage_dir(cfg, "07_report") / COMPARISON).exists():
        table = read_comparison(stage_dir(cfg, "07_report"))
        baselines = table[table["method"].isin(["Popularity", "SASRec"])].to_dict("records")
    finished = [m.get("finished_at", "") for m in manifests.values()]
    return {
        "table": PIPELINE,
        "title": f"Pipeline run `{cfg.run_name}`",
        "source": f"python -m align3gr_kit run --config {project_relative(config_path)}",
        "dataset": dataset_label(cfg),
        "config": project_relative(config_path),
        "overrides": overrides,
        "fingerprint": config_fingerprint(ran),
        "run_name": cfg.run_name,
        "seeds": [ran.seed],
        "budget": row_budget(ran),
        "stage_seconds": {name: m.get("wall_seconds") for name, m in manifests.items()},
        # a stage that continued from a training checkpoint timed only its last attempt: say so
        "resumed": {name: {"from": int(m["metrics"]["train_resumed_from_step"]),
                           "of": int(m["metrics"].get("train_steps") or 0)}
                    for name, m in manifests.items() if (m.get("metrics") or {}).get("train_resumed_from_step")},
        "wall_seconds": round(sum(m.get("wall_seconds") or 0.0 for m in manifests.values()), 1),
        "machines": sorted({m["machine"] for m in manifests.values() if m.get("machine")}),
        "commits": sorted({(m.get("git_commit") or "unknown")[:7] for m in manifests.values()}),
        "date": max(finished)[:16].replace("T", " ") + " UTC" if finished else "",
        "smoke": cfg.smoke,
        "rows": [json_record(r) for r in rows],
        "baselines": [json_record(r) for r in baselines],
        "paired": paired_steps(models, k=10, seed=ran.seed),
        # each model's per-user test target ranks, so that a table row read from this file
        # (:func:`align3gr_kit.report.ledger.find_row`) is still compared user by user on another machine
        "test_target_ranks": {model: [int(r) for r in ranks] for model, ranks in models if ranks is not None},
    }


def pipeline_markdown(doc: dict[str, Any]) -> str:
    """The markdown of a :func:`pipeline_document`: provenance, stage times, then one row per model
    (and the baselines on the same users), test metrics first."""
    def cell(v: Any) -> str:
        return "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    times = ", ".join(f"{name.split('_')[0]} {s:,.0f} s" if s >= 10 else f"{name.split('_')[0]} {s:.1f} s"
                      for name, s in doc["stage_seconds"].items() if s is not None)
    lines = [
        f"**{doc['title']}** on `{doc['dataset']}`: `{doc['source']}`"
        + (f" with `{json.dumps(doc['overrides'], sort_keys=True)}`" if doc["overrides"] else "")
        + f", fingerprint `{doc['fingerprint']}`, seed {doc['seeds'][0]}, commit(s) "
        + ", ".join(f"`{c}`" for c in doc["commits"]) + f", finished {doc['date']}.",
        "",
        f"Wall time {doc['wall_seconds']:,.0f} s in all, the sum of the stages' own times ({times})"
        + (f", measured on {' and '.join(doc['machines'])}." if doc.get("machines") else ".")
        + "".join(f" Stage {name.split('_')[0]} resumed from its checkpoint at step {r['from']} of {r['of']}: its time "
                  "counts that last attempt only." for name, r in (doc.get("resumed") or {}).items()),
        "",
        "Budget: " + "; ".join(f"`{k}` {v}" for k, v in sorted(doc["budget"].items())),
        "",
        "| model | test users | test Recall@5 | test Recall@10 | test NDCG@5 | test NDCG@10 | test liked@10 "
        "| test mean rating@10 | valid Recall@10 | valid NDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {cell(r.get('users'))} | "
                     + " | ".join(cell(r.get(f"test {k}")) for k in METRIC_KEYS + JUDGED_KEYS)
                     + f" | {cell(r.get('valid recall@10'))} | {cell(r.get('valid ndcg@10'))} |")
    for b in doc.get("baselines", []):
        lines.append(f"| {b['method']} ({b.get('source', '')}) | | "
                     + " | ".join(cell(b.get(k)) for k in METRIC_KEYS) + " | – | – | – | – |")
    lines += paired_markdown(doc.get("paired") or [], "One seed: each model against the one trained before it, "
                                                      "on the same test users")
    return "\n".join(lines) + "\n"


def write_pipeline_document(cfg: RunConfig, config_path: str | Path, out_dir: Path | None = None) -> Path | None:
    """Write :func:`pipeline_document` as ``<out_dir>/pipeline-<run>.json`` and ``.md`` (default
    ``out_dir``: :func:`align3gr_kit.report.tables.tables_dir`); ``None`` (nothing written) before
    ``04_sft`` finished."""
    from align3gr_kit.report.tables import tables_dir
    from align3gr_kit.utils import atomic_path, write_json

    doc = pipeline_document(cfg, config_path)
    if doc is None:
        return None
    out_dir = Path(out_dir or tables_dir(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{PIPELINE}-{cfg.run_name}.json"
    write_json(path, doc)
    with atomic_path(path.with_suffix(".md")) as tmp:
        Path(tmp).write_text(pipeline_markdown(doc))
    return path
