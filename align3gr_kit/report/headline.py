"""BENCHMARKS.md's first table: what the kit reaches against SASRec, one row per dataset and backbone.

Read from the committed result files under ``reports/tables/<dataset>/`` only (nothing recomputed):

* a pipeline run's file (``pipeline-<run>.json``, :mod:`~align3gr_kit.report.pipeline_file`) that
  holds SASRec on the same test users: its models in training order, each with validation and test
  metrics; the best model of the chain is the one with the highest *validation* Recall@10 (ties:
  validation NDCG@10), so the test numbers shown are not picked on the test split;
* an ablation table with a SASRec row (``baselines``, e.g. the backbone table): its rows grouped by
  backbone (``model.base`` of each row's budget); these rows carry no validation metrics, so the best
  is picked on test Recall@10, and the row says so.

Of several sources for one dataset and backbone, the most recent file wins. A cell with no source in
the file (Popularity not scored, a machine not recorded) says ``not measured`` / ``not recorded``.

Layer: a writer; imports :mod:`~align3gr_kit.report.pipeline_file` and
:mod:`~align3gr_kit.report.specs` of :mod:`align3gr_kit.report`, nothing that runs.
"""

from __future__ import annotations

import math
from typing import Any

from align3gr_kit.report.pipeline_file import FULL_TEST, PIPELINE
from align3gr_kit.report.specs import RATIO_TO

POPULARITY = "Popularity"
NOT_MEASURED = "not measured"
NOT_RECORDED = "not recorded"


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _device(machine: str | None) -> str:
    """The device and precision a machine string (:func:`align3gr_kit.utils.machine_info`) implies."""
    if not machine:
        return NOT_RECORDED
    if ", GPU " in machine:
        return "GPU " + machine.split(", GPU ", 1)[1]
    return "CPU, bf16 autocast" if "bf16 units" in machine else "CPU, fp32"


def _from_pipeline(key: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    baselines = {b["method"]: b for b in doc.get("baselines") or []}
    rows = [r for r in doc["rows"] if _number(r.get("test recall@10")) is not None]
    if RATIO_TO not in baselines or not rows:
        return []
    best = max(rows, key=lambda r: (_number(r.get("valid recall@10")) or -1.0, _number(r.get("valid ndcg@10")) or -1.0))
    pop = baselines.get(POPULARITY, {})
    machine = " and ".join(doc.get("machines") or []) or None
    command = f"{doc['source']} --run-name {doc['run_name']}" + "".join(
        f" --set {k}={v}" for k, v in sorted((doc.get("overrides") or {}).items()))
    return [{
        "dataset": doc["dataset"], "backbone": doc["budget"].get("model.base", NOT_RECORDED),
        "model": f"{best['model']} (best of {len(rows)} on validation Recall@10)",
        "recall@10": _number(best["test recall@10"]), "ndcg@10": _number(best.get("test ndcg@10")),
        "sasrec recall@10": _number(baselines[RATIO_TO].get("recall@10")),
        "sasrec ndcg@10": _number(baselines[RATIO_TO].get("ndcg@10")),
        "popularity recall@10": _number(pop.get("recall@10")), "popularity ndcg@10": _number(pop.get("ndcg@10")),
        "seeds": list(doc["seeds"]), "users": best.get("users"), "machine": machine, "date": doc["date"],
        "command": command, "file": key,
    }]


def _from_table(key: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    by_method = {r["method"]: r for r in doc["rows"]}
    sasrec = by_method.get(RATIO_TO)
    if sasrec is None or sasrec.get("last_stage") != "baseline":
        return []
    pop = by_method.get(POPULARITY, {})
    machines = {m["method"]: m["machine"] for m in doc.get("machines") or [] if isinstance(m, dict)}
    reused = {r["method"] for r in doc.get("reused") or []}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        if r.get("last_stage") != "baseline" and _number(r.get("recall@10")) is not None:
            groups.setdefault((r.get("budget") or {}).get("model.base", NOT_RECORDED), []).append(r)
    command = (f"python -m align3gr_kit ablate --config {doc['config']} --table {doc['table']} "
               f"--seeds {len(doc['seeds'])}" + (f" --upto {doc['upto']}" if doc.get("upto") else ""))
    out = []
    for backbone, rows in groups.items():
        best = max(rows, key=lambda r: (_number(r["recall@10"]), _number(r.get("ndcg@10")) or -1.0))
        # a row read back from an earlier run ran where that run ran, which an older table file does not name
        machine = machines.get(best["method"]) or (None if best["method"] in reused else doc.get("machine"))
        users = (best.get("budget") or {}).get("decode.max_eval_users", NOT_RECORDED)
        out.append({
            "dataset": doc["dataset"], "backbone": backbone,
            "model": f"{best['method']} " + ("(the only model of this backbone in the file)" if len(rows) == 1 else
                                             f"(best of {len(rows)} on test Recall@10: the file has no validation metrics)"),
            "recall@10": _number(best["recall@10"]), "ndcg@10": _number(best.get("ndcg@10")),
            "sasrec recall@10": _number(sasrec.get("recall@10")), "sasrec ndcg@10": _number(sasrec.get("ndcg@10")),
            "popularity recall@10": _number(pop.get("recall@10")), "popularity ndcg@10": _number(pop.get("ndcg@10")),
            "seeds": list(doc["seeds"]), "users": users or "all", "machine": machine,
            "date": doc["date"], "command": command, "file": key,
        })
    return out


def headline_rows(tables: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (dataset, backbone), sorted by both: the most recent of the sources in ``tables``
    (``"<dataset>/<name>" -> document``, as :func:`align3gr_kit.report.benchmarks_md.table_files` reads
    them) that hold SASRec on the same users. Keys: ``dataset``, ``backbone``, ``model`` (the best model
    and how it was picked), ``recall@10``, ``ndcg@10``, ``sasrec …``/``popularity …`` (None when not
    scored), ``seeds``, ``users``, ``machine``, ``date``, ``command``, ``file``."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for key, doc in sorted(tables.items()):
        if doc.get("table") == FULL_TEST:  # a run's two models on every user: its own block, not a chain's best
            continue
        found = _from_pipeline(key, doc) if doc.get("table") == PIPELINE else _from_table(key, doc)
        for rec in found:
            slot = (rec["dataset"], rec["backbone"])
            if slot not in latest or rec["date"] > latest[slot]["date"]:
                latest[slot] = rec
    return [latest[slot] for slot in sorted(latest)]


def _metric(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.4f}"


def _ratio(value: float | None, to: float | None) -> str:
    return NOT_MEASURED if value is None or not to else f"{value / to:.2f}x"


def headline_markdown(tables: dict[str, dict[str, Any]]) -> str:
    """The headline table of :func:`headline_rows` as markdown: test Recall@10 and NDCG@10 of the best
    model, SASRec and Popularity on the same users, the best model's ratio to SASRec, seeds, users,
    machine, device, date, command and result file; a sentence instead when no file holds SASRec."""
    rows = headline_rows(tables)
    if not rows:
        return ("No committed result file holds SASRec on the same users yet: `python -m align3gr_kit run "
                "--config <config>` then `python -m align3gr_kit report pipeline --config <config>` makes one.\n")
    lines = ["| dataset | backbone | best model of the chain | Recall@10 | NDCG@10 | SASRec R@10 / N@10 "
             "| Popularity R@10 / N@10 | ratio to SASRec (R@10 / N@10) | seeds | test users | machine | device "
             "| date | command | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['model']} | {_metric(r['recall@10'])} | {_metric(r['ndcg@10'])} "
            f"| {_metric(r['sasrec recall@10'])} / {_metric(r['sasrec ndcg@10'])} "
            f"| {_metric(r['popularity recall@10'])} / {_metric(r['popularity ndcg@10'])} "
            f"| {_ratio(r['recall@10'], r['sasrec recall@10'])} / {_ratio(r['ndcg@10'], r['sasrec ndcg@10'])} "
            f"| {len(r['seeds'])} {r['seeds']} | {r['users'] if r['users'] is not None else NOT_RECORDED} "
            f"| {r['machine'] or NOT_RECORDED} | {_device(r['machine'])} | {r['date']} | `{r['command']}` "
            f"| `reports/tables/{r['file']}.json` |")
    return "\n".join(lines) + "\n"
