"""A table document as files: ``<table>.json``, ``.md`` (with its reading) and ``.html`` (a figure).

:func:`table_markdown` writes the provenance line, the budget, one row per variant (mean ± sd over
seeds, the step against its reference row and its verdict, :mod:`align3gr_kit.report.statistics`)
and a reading of the steps beside the papers' directions (:func:`table_reading`), generated from the
numbers so that BENCHMARKS.md and notebook 07 never hold a hand-typed figure. A run's result file
(``table: pipeline``) has its own layout (:mod:`align3gr_kit.report.pipeline_file`).

Layer: a writer; imports :mod:`~align3gr_kit.report.ledger`, :mod:`~align3gr_kit.report.specs`,
:mod:`~align3gr_kit.report.statistics` and :mod:`~align3gr_kit.report.pipeline_file` of
:mod:`align3gr_kit.report`, nothing that runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.report.ledger import METRIC_KEYS, project_relative, tables_dir
from align3gr_kit.report.pipeline_file import FULL_TEST, PIPELINE, fmt_number, full_test_markdown, pipeline_markdown
from align3gr_kit.report.specs import PAPER_DIRECTION, RATIO_TO, TABLE_NAMES, TABLES
from align3gr_kit.report.statistics import (
    LIKED,
    NOT_JUDGED,
    PAIRED_GAIN,
    PAIRED_LOSS,
    PAIRED_WITHIN,
    SEED_WITHIN,
    VERDICT_KEYS,
    judged_keys,
    spread_verdict,
    table_seed_paired,
)
from align3gr_kit.utils import atomic_path, read_json, write_json


def _cell(mean: Any, sd: Any, missing: str = "failed") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return missing
    return f"{mean:.4f}" if sd is None or (isinstance(sd, float) and math.isnan(sd)) else f"{mean:.4f} ± {sd:.4f}"


def _ratio(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def table_markdown(doc: dict[str, Any]) -> str:
    """The markdown of a table document (the ``.md`` file and the BENCHMARKS.md block): a line of
    provenance, the budget, then one row per variant (mean ± sd over seeds, the step against its
    reference row and its verdict). A run's result file (``table: pipeline``) and its full-test file
    (``table: full-test``) have their own layouts (:mod:`align3gr_kit.report.pipeline_file`)."""
    if doc["table"] == PIPELINE:
        return pipeline_markdown(doc)
    if doc["table"] == FULL_TEST:
        return full_test_markdown(doc)
    seeds = doc["seeds"]
    ratios = any(f"{VERDICT_KEYS[0]} / {RATIO_TO}" in r for r in doc["rows"])
    verdict_keys = judged_keys(doc["rows"])
    liked = LIKED in verdict_keys
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in doc["rows"] if r.get("last_stage") != "baseline"}
    paired = table_seed_paired(doc)
    lines = [
        f"**{doc['title']}** ({doc['source']}) on `{doc['dataset']}`: config `{doc['config']}`"
        + (f" with `{json.dumps(doc['overrides'], sort_keys=True)}`" if doc["overrides"] else "")
        + f", fingerprint `{doc['fingerprint']}`, chain up to `{doc['upto']}`, {len(seeds)} seed(s) {seeds}, "
        f"commit `{(doc['commit'] or 'unknown')[:7]}`, {doc['date']}, wall {doc['wall_seconds']:.0f} s "
        "(this command; stages reused from earlier runs are not counted)"
        + (f" on {doc['machine']}." if doc.get("machine") else "."),
        "",
        "Budget: " + "; ".join(f"`{k}` {v}" for k, v in sorted(json.loads(next(iter(budgets))).items()))
        if len(budgets) == 1 else "Budget: per row in the JSON file (rows differ).",
    ]
    spec = TABLES.get(doc["table"])
    # how the rows share the budget, for the files whose rows ran under that rule (not files measured before it)
    if spec is not None and spec.budget_note and all(r.get("budget", {}).get(spec.budget_note_if)
                                                     for r in doc["rows"] if r.get("last_stage") != "baseline"):
        lines[-1] += " " + spec.budget_note
    lines += [
        "",
        "| variant | seeds | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 |" + (" liked@10 |" if liked else "")
        + " vs | Δ Recall@10 | Δ NDCG@10 |" + (" Δ liked@10 |" if liked else "")
        + f" verdict (R@10 / N@10{' / liked' if liked else ''}) |"
        + (f" paired by seed (R@10 / N@10{' / liked' if liked else ''}) |" if paired else "")
        + (f" R@10 / {RATIO_TO} | N@10 / {RATIO_TO} |" if ratios else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if liked else "") + ("---|" if paired else "")
        + ("---|---|" if ratios else ""),
    ]
    for r in doc["rows"]:
        cells = [_cell(r.get(k), r.get(f"{k} sd")) for k in METRIC_KEYS]
        if liked:  # rows without a judge (the classic baselines) show a dash
            cells.append(_cell(r.get(LIKED), r.get(f"{LIKED} sd"), missing="–"))
        deltas = [("" if r.get(f"d {k}") is None else f"{r[f'd {k}']:+.4f}") for k in verdict_keys]
        verdict = " / ".join(r.get(f"{k} verdict", "") for k in verdict_keys).strip(" /")
        line = (f"| {r['method']} | {r['seeds']} | " + " | ".join(cells)
                + f" | {r.get('vs', '')} | " + " | ".join(deltas) + f" | {verdict} |")
        if paired:
            steps = [paired.get((r["method"], k)) for k in verdict_keys]
            line += " " + (" / ".join(f"{x['verdict']} ({x['up']}/{x['seeds']} up)" if x else "–" for x in steps)
                           if any(steps) else "") + " |"
        if ratios:
            line += "".join(f" {_ratio(r.get(f'{k} / {RATIO_TO}'))} |" for k in VERDICT_KEYS)
        lines.append(line)
    if any(r.get(f"{k} verdict") in (PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN) for r in doc["rows"] for k in verdict_keys):
        lines += ["", "One seed: a verdict marked *(paired)* or *within user noise* compares the two rows' models on "
                      "the same test users: the paired-bootstrap 95% interval of the per-user difference "
                      "(in the JSON, `<metric> ci low/high`, and McNemar's p for Recall@10) excludes 0 or not."]
    if paired:
        lines += ["", "Paired by seed: the rows of one seed share that seed's upstream stages, so a step is also "
                      "judged on its per-seed differences: a gain or a loss when their mean exceeds their standard "
                      "deviation in size (the same one-spread rule), with how many seeds went up; in the JSON, "
                      "`<metric> paired sd/up/p` (p: two-sided one-sample t-test of the differences)."]
    lines += ["", "Rows: " + "; ".join(f"**{r['method']}**: {r['note']}" for r in doc["rows"]) + "."]
    lines += dpo_training_lines(doc)
    reading = table_reading(doc, paired)
    if reading:
        lines += ["", "Reading beside the paper (written from the numbers above):", ""] + [f"- {x}" for x in reading]
    if doc.get("reused"):
        # real-data rows are read from files committed under reports/; smoke rows from runs/ of this machine
        committed = all(r["source"].startswith("reports/") for r in doc["reused"])
        lines += ["", "Rows measured earlier with the same config and seed, read from "
                  + ("committed results: " if committed else "earlier runs' result files: ")
                  + "; ".join(f"{r['method']} seed {r['seed']}: `{r['source']}`" for r in doc["reused"]) + "."]
    lines += machines_lines(doc)
    if doc["failed"]:
        lines += ["", "Failed runs: " + "; ".join(f"{f['method']} seed {f['seed']}: {f['error']}" for f in doc["failed"])]
    return "\n".join(lines) + "\n"


def dpo_training_lines(doc: dict[str, Any]) -> list[str]:
    """What each row's last DPO stage did (the rows' ``dpo``, :func:`align3gr_kit.report.tables.row_training`),
    as a second table: rounds, prompts, optimiser steps, examples, rejected per example (Softmax-DPO's
    effective N), the chosen-minus-rejected margin before (reference) and after (policy), the share of
    pairs whose margin rose, and the training oracle's kappa with the judge; means over seeds. Empty
    for tables without DPO rows (and files written before rows kept it)."""
    rows = [r for r in doc["rows"] if r.get("dpo")]
    if not rows:
        return []
    lines = ["", "What each row's last DPO stage trained (mean over seeds; margin = the mean chosen-minus-rejected "
                 "log-probability over the stage's pairs, before under the reference, after under the trained "
                 "policy):", "",
             "| variant | stage | rounds | prompts | steps | examples | rejected / example | margin before | "
             "margin after | margins up | oracle-judge kappa |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["dpo"]
        lines.append(f"| {r['method']} | {d['stage']} ({', '.join(d.get('round_names', []))}) | {fmt_number(d.get('rounds'), 'g')} "
                     f"| {fmt_number(d.get('prompts'), 'g')} | {fmt_number(d.get('steps'), 'g')} | {fmt_number(d.get('n_examples'), 'g')} "
                     f"| {fmt_number(d.get('mean_rejected'), '.2f')} | {fmt_number(d.get('margin_before'), '+.3f')} "
                     f"| {fmt_number(d.get('margin_after'), '+.3f')} | {fmt_number(d.get('margin_up_share'), '.2f')} "
                     f"| {fmt_number(d.get('judge_kappa'), '.2f')} |")
    return lines


def choice_line(doc: dict[str, Any]) -> str | None:
    """For a hyperparameter table (``choose_on_valid``): the row with the best mean validation
    Recall@10 and, only then, its test Recall@10; None for other tables or rows without validation means."""
    spec = TABLES.get(doc["table"])
    rows = [r for r in doc["rows"] if r.get("valid recall@10") is not None]
    if spec is None or not spec.choose_on_valid or not rows:
        return None
    ranked = sorted(rows, key=lambda r: (r["valid recall@10"], r.get("valid ndcg@10") or 0.0), reverse=True)
    best = ranked[0]
    others = ", ".join(f"{r['method']} {r['valid recall@10']:.4f}" for r in ranked[1:])
    gap = best["valid recall@10"] - ranked[1]["valid recall@10"] if len(ranked) > 1 else None
    return (f"Chosen on validation: **{best['method']}** (validation Recall@10 {best['valid recall@10']:.4f}; "
            f"the others {others}" + (f"; {gap:.4f} above the next, {len(doc['seeds'])} seed(s)" if gap is not None
                                      else "") + f"); its test Recall@10 is "
            f"{_cell(best.get('recall@10'), best.get('recall@10 sd'))}.")


def machines_lines(doc: dict[str, Any]) -> list[str]:
    """A paragraph naming which rows ran on which machine, when the rows ran on more than one (rows
    reused from another session): under ``model.dtype: auto`` a CPU with bf16 units trains in bf16
    autocast and one without in fp32, so a step between such rows also changes the precision."""
    by_machine: dict[str, list[str]] = {}
    for m in doc.get("machines", []):
        by_machine.setdefault(m["machine"], []).append(f"{m['method']} seed {m['seed']}")
    if len(by_machine) < 2:
        return []
    return ["", "The rows ran on more than one machine (under `model.dtype: auto` a CPU with bf16 units trains "
                "in bf16 autocast, one without in fp32, so a step between rows of different machines also changes "
                "the precision): " + "; ".join(f"{machine}: {', '.join(rows)}" for machine, rows in by_machine.items())
            + "."]


_METRIC_NAMES = {"recall@10": "Recall@10", "ndcg@10": "NDCG@10", LIKED: "liked share@10"}


def _paired_words(res: dict[str, Any]) -> str:
    """The words of a seed-paired step (:func:`~align3gr_kit.report.statistics.seed_paired`) for the reading."""
    where = "within the spread" if res["verdict"] == SEED_WITHIN else "beyond the spread"
    return (f"paired by seed: sd {res['sd']:.4f}, up in {res['up']} of {res['seeds']} seeds, "
            f"t-test p {res['p']:.2g}, {where}")


def table_reading(doc: dict[str, Any], paired_steps: dict[tuple[str, str], dict] | None = None) -> list[str]:
    """One line per row with a paper direction (:data:`~align3gr_kit.report.specs.PAPER_DIRECTION`):
    its step against the reference row on each verdict metric, and whether that step goes the paper's
    way *beyond the spread*, against it, or neither, and the same judged paired by seed where the two
    rows share seeds (:func:`~align3gr_kit.report.statistics.seed_paired`); then a count of each.
    Written from the table file alone, so the reading in BENCHMARKS.md and notebook 07 is regenerated
    with the numbers (never typed by hand). ``paired_steps``:
    :func:`~align3gr_kit.report.statistics.table_seed_paired` of ``doc`` when the caller has it already."""
    directions = PAPER_DIRECTION.get(doc["table"], {})
    keys = judged_keys(doc["rows"])
    buckets = ("the paper's way", "against the paper", "within the spread", "one seed, no spread")
    tally, seed_tally = dict.fromkeys(buckets, 0), dict.fromkeys(buckets, 0)
    if paired_steps is None:
        paired_steps = table_seed_paired(doc)
    lines = []
    for r in doc["rows"]:
        want = directions.get(r["method"])
        if want is None or not r.get("vs"):
            continue
        parts = []
        for k in keys:
            d, verdict = r.get(f"d {k}"), r.get(f"{k} verdict", "")
            if d is None or verdict in ("", "failed", NOT_JUDGED):
                continue
            if verdict in ("gain", "loss", PAIRED_GAIN, PAIRED_LOSS):
                bucket = "the paper's way" if (d > 0) == (want > 0) else "against the paper"
                call = bucket + (", one seed, paired over users" if verdict in (PAIRED_GAIN, PAIRED_LOSS) else "")
            elif verdict in ("within spread", PAIRED_WITHIN):
                bucket = "within the spread"
                call = bucket if verdict == "within spread" else "within the users' noise, one seed"
            else:
                bucket = call = "one seed, no spread"
            res = paired_steps.get((r["method"], k))
            if res is not None:
                call += "; " + _paired_words(res)
            if k == "recall@10":
                tally[bucket] += 1
                if res is not None:
                    seed_tally["within the spread" if res["verdict"] == SEED_WITHIN else
                               "the paper's way" if (res["d"] > 0) == (want > 0) else "against the paper"] += 1
            parts.append(f"{_METRIC_NAMES[k]} {d:+.4f} ({call})")
        if parts:
            lines.append(f"**{r['method']}** vs {r['vs']} (paper: {'higher' if want > 0 else 'lower'}): "
                         + ", ".join(parts) + ".")
    if lines:
        n, ours = sum(tally.values()), tally["the paper's way"]
        n_seed, ours_seed = sum(seed_tally.values()), seed_tally["the paper's way"]
        paired = any(r.get(f"{k} verdict") in (PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN) for r in doc["rows"] for k in keys)
        lines.append(f"On Recall@10, {ours} of {n} steps go the paper's way beyond the spread"
                     + (" (of seeds; with one seed, of users)" if paired else "") + ", "
                     f"{tally['against the paper']} against it, {tally['within the spread']} within the spread"
                     + (f", {tally['one seed, no spread']} with one seed (no spread measured, no verdict)"
                        if tally["one seed, no spread"] else "") + "."
                     + (f" Paired by seed: {ours_seed} of {n_seed} the paper's way beyond the spread, "
                        f"{seed_tally['against the paper']} against it, {seed_tally['within the spread']} within the "
                        "spread." if n_seed else ""))
    if (choice := choice_line(doc)) is not None:
        lines.insert(0, choice)
    spec = TABLES.get(doc["table"])
    by = {r["method"]: r for r in doc["rows"]}
    calls = {"gain": "beyond the spread", "loss": "beyond the spread", "within spread": "within the spread",
             "1 seed": "one seed, no spread"}
    for name, ref, asks in spec.also if spec else ():
        if name not in by or ref not in by:
            continue
        also_paired = table_seed_paired(doc, [(name, ref)])
        parts = []
        for k in keys:
            a, b = by[name].get(k), by[ref].get(k)
            if a is None or b is None or pd.isna(a) or pd.isna(b):
                continue
            call = calls[spread_verdict(a - b, by[name].get(f"{k} sd"), by[ref].get(f"{k} sd"))]
            if (res := also_paired.get((name, k))) is not None:
                call += "; " + _paired_words(res)
            parts.append(f"{_METRIC_NAMES[k]} {a - b:+.4f} ({call})")
        if parts:
            lines.append(f"Also **{name}** vs {ref} ({asks}): " + ", ".join(parts) + ".")
    return lines


def table_figure(doc: dict[str, Any]):
    """A plotly figure: Recall@10 and NDCG@10 (and the liked share, when judged) per variant, bars at
    the mean, error bars one sd."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = [r["method"] for r in doc["rows"]]
    for k in judged_keys(doc["rows"]):
        fig.add_bar(name=k, x=names, y=[r.get(k) for r in doc["rows"]],
                    error_y={"type": "data", "array": [r.get(f"{k} sd") or 0.0 for r in doc["rows"]], "visible": True})
    fig.update_layout(barmode="group", title=f"{doc['title']} ({doc['source']}), {doc['dataset']}, "
                      f"{len(doc['seeds'])} seed(s): mean ± sd", yaxis_title="test metric")
    return fig


def write_table(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``<out_dir>/<table>.json``, ``.md`` (:func:`table_markdown`) and ``.html`` (:func:`table_figure`,
    with ``plotly.min.js`` beside it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{doc['table']}.{ext}" for ext in ("json", "md", "html")}
    write_json(paths["json"], doc)
    with atomic_path(paths["md"]) as tmp:
        Path(tmp).write_text(table_markdown(doc))
    with atomic_path(paths["html"]) as tmp:
        # plotly.js once per folder beside the pages (as the stages' figures), so they open offline
        table_figure(doc).write_html(str(tmp), include_plotlyjs="directory", full_html=True)
    return paths


def read_tables(folder: Path) -> dict[str, dict[str, Any]]:
    """``table name -> document`` of every ``<table>.json`` in ``folder`` (empty when there is none)."""
    folder = Path(folder)
    return {p.stem: read_json(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def ablate_table_command(name: str, seeds: int = 3, upto: str | None = None) -> str:
    """The command that makes table ``name`` for a config."""
    return (f"python -m align3gr_kit ablate --config <this run's config> --table {name} --seeds {seeds}"
            + (f" --upto {upto}" if upto else ""))


def tables_overview(cfg: RunConfig, folder: Path | None = None) -> str:
    """Markdown of every table found for this config's data
    (:func:`~align3gr_kit.report.ledger.tables_dir`, or ``folder``), each with its provenance line;
    for a table not made yet, the command that makes it. Reads files only."""
    folder = Path(folder or tables_dir(cfg))
    found = {k: v for k, v in read_tables(folder).items() if v.get("table") in TABLE_NAMES}  # not runs' files
    where = project_relative(folder)
    parts = [f"Tables in `{where}`: {', '.join(found) if found else 'none yet'}."]
    for name in TABLE_NAMES:
        if name in found:
            parts.append(f"### {found[name]['title']}\n\n{table_markdown(found[name])}")
        else:
            parts.append(f"`{name}` not made yet: `{ablate_table_command(name)}`")
    return "\n\n".join(parts)
