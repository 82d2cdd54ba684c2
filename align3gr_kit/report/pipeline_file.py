"""A finished pipeline run's results as a small committed file: ``reports/tables/<dataset>/pipeline-<run>.{json,md}``.

Every trained model's valid/test metrics in training order and per-user test target ranks
(:mod:`align3gr_kit.report.stage_metrics`), the classic baselines on the same users when stage 07
ran, each stage's wall time, machine and commit; read from the run folder only (nothing recomputed).
``report pipeline`` writes it under ``reports/tables/``, and the runner into the run's own report
folder; the ledger reads it back (:func:`align3gr_kit.report.ledger.find_row`).

Layer: a writer; imports :mod:`~align3gr_kit.report.ledger`, :mod:`~align3gr_kit.report.specs`,
:mod:`~align3gr_kit.report.stage_metrics` and :mod:`~align3gr_kit.report.pipeline_report` of
:mod:`align3gr_kit.report`, nothing that runs (``stages.runner`` imports this module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ledger import (
    JUDGED_KEYS,
    METRIC_KEYS,
    config_fingerprint,
    dataset_label,
    json_record,
    project_relative,
    tables_dir,
)
from align3gr_kit.report.pipeline_report import COMPARISON, read_comparison
from align3gr_kit.report.specs import config_diff, row_budget
from align3gr_kit.report.stage_metrics import (
    paired_markdown,
    paired_steps,
    pipeline_stage_metrics,
    pipeline_target_ranks,
)
from align3gr_kit.stages.contract import MANIFEST, STAGES, read_manifest, stage_dir
from align3gr_kit.utils import atomic_path, write_json


#: ``table`` of a run's result file (beside the ablation tables, ``reports/tables/<dataset>/``).
PIPELINE = "pipeline"


def pipeline_document(cfg: RunConfig, config_path: str | Path) -> dict[str, Any] | None:
    """A finished run's results as a small file for ``reports/tables/<dataset>/pipeline-<run>.json``:
    every trained model's valid/test metrics in training order
    (:func:`~align3gr_kit.report.stage_metrics.pipeline_stage_metrics`) and per-user test target ranks
    (:func:`~align3gr_kit.report.stage_metrics.pipeline_target_ranks`), the baselines on the same
    users when stage 07 ran, each stage's wall time and the commit each stage ran at. ``None`` before
    ``04_sft`` finished. Read from the run folder only (nothing recomputed): the settings are those
    the run's last stage recorded, with ``overrides`` saying how they differ from the YAML at
    ``config_path`` as it is now."""
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
    ``out_dir``: :func:`align3gr_kit.report.ledger.tables_dir`); ``None`` (nothing written) before
    ``04_sft`` finished."""
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


#: ``table`` of a run's full-test file (``report full-test``, :mod:`align3gr_kit.report.full_test`).
FULL_TEST = "full-test"


def fmt_number(value: Any, fmt: str = ".4f") -> str:
    """``value`` formatted, or a dash when it is missing (None or NaN)."""
    return "–" if value is None or (isinstance(value, float) and value != value) else format(value, fmt)


def _ratio(value: Any) -> str:
    return fmt_number(value, ".2f") + ("" if fmt_number(value) == "–" else "x")


def full_test_markdown(doc: dict[str, Any]) -> str:
    """The ``.md`` of a full-test document: provenance, one row per model, the paired step."""
    users = f"all {doc['users']:,}" if doc["users"] == doc["all_users"] else f"the first {doc['users']:,} of {doc['all_users']:,}"
    lines = [f"**Run `{doc['run_name']}` on {users} test users** (`{doc['dataset']}`): `python -m align3gr_kit report "
             f"full-test --config {doc['config']}`, fingerprint `{doc['fingerprint']}`, seed {doc['seed']}, commit "
             f"`{(doc['commit'] or 'unknown')[:7]}`, {doc['date']}, wall {doc['wall_seconds']:,.0f} s on {doc['machine']}; "
             f"liked share by the judge ({doc['judge'] or 'none: this dataset has no judge'}).", "",
             "| model | source | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 | liked@10 | Recall@10 / SASRec | NDCG@10 / SASRec |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['method']} | {r.get('source', '')} | " + " | ".join(fmt_number(r.get(k)) for k in METRIC_KEYS)
                     + f" | {fmt_number(r.get('liked_share@10'))} | {_ratio(r.get('recall@10 / SASRec'))} "
                     f"| {_ratio(r.get('ndcg@10 / SASRec'))} |")
    lines += paired_markdown(doc["paired"], "The final model against the SFT model on the same users")
    return "\n".join(lines) + "\n"
