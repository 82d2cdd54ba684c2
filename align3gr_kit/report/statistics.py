"""Summaries over seeds and the verdicts on each step of a table: the statistics a table is written with.

Spread: every row is the mean and sample standard deviation over seeds (:func:`summarise`). A row is
compared with its reference row (the previous one for cumulative tables, the full setting for
"without" tables); a difference is called a gain or a loss only when it exceeds the spread of the
difference, ``sqrt(sd_row^2 + sd_ref^2)`` (the standard deviation of the difference of one run of
each; :func:`verdicts`). Rows that ran the same seeds are also judged paired by seed
(:func:`seed_paired`: the mean of the per-seed differences against their standard deviation), since
the rows of one seed share its upstream stages. With one seed the seed spread is unmeasured; where
both rows kept their users' target ranks, the step is judged on the same users instead
(:func:`paired_verdicts`: a paired-bootstrap interval of the per-user difference, marked
*(paired)*), else no verdict is given.

Layer: a writer; imports :mod:`~align3gr_kit.report.ledger` and :mod:`~align3gr_kit.report.specs`
of :mod:`align3gr_kit.report` (and ``metrics``), nothing that runs.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from align3gr_kit.report.ledger import JUDGED_KEYS, METRIC_KEYS
from align3gr_kit.report.specs import RATIO_TO


#: The metrics a verdict is given on.
VERDICT_KEYS = ("recall@10", "ndcg@10")


#: What users like in the top-10 (the evaluation judge): a column and a verdict of its own in tables
#: whose runs were judged (the DPO table on data with a judge: RF-DPO's aim, issue 10).
LIKED = "liked_share@10"


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds per method, in the order methods first appear.

    ``table``: one row per (method, seed) with metric columns (NaN for a failed run). Returns one row
    per method: ``method``, ``seeds`` (runs that produced metrics), the metric means, then
    ``"<metric> sd"`` (``ddof=1``, so NaN with a single seed: one run measures no spread). The
    :data:`~align3gr_kit.report.ledger.JUDGED_KEYS` (what users like) come along when some run has them.
    """
    order = list(dict.fromkeys(table["method"]))
    present = [k for k in METRIC_KEYS if k in table]
    present += [k for k in JUDGED_KEYS if k in table and table[k].notna().any()]
    g = table.groupby("method", sort=False)
    if not present:
        return pd.DataFrame({"method": order, "seeds": [0] * len(order)})
    mean = g[present].mean().reindex(order)
    sd = g[present].std(ddof=1).reindex(order).add_suffix(" sd")
    out = pd.concat([mean, sd], axis=1).rename_axis("method").reset_index()
    out.insert(1, "seeds", g[present[0]].count().reindex(order).to_numpy())
    return out


#: The liked-share verdict of a step whose reference (or row) is a classic baseline without a judge.
NOT_JUDGED = "–"


def verdicts(summary: pd.DataFrame, compare: str) -> pd.DataFrame:
    """``summary`` (:func:`summarise`) with, per row, its reference row
    (``vs``), the difference ``d <metric>`` and ``<metric> verdict`` for :data:`VERDICT_KEYS` (and
    :data:`LIKED` when the summary has it): ``gain``/``loss`` when ``|d|`` exceeds
    ``sqrt(sd_row^2 + sd_ref^2)``, ``within spread`` when it does not, ``1 seed`` when either row has
    no measured spread, ``failed`` when either has no value (on the liked share, :data:`NOT_JUDGED`
    when either row is a classic baseline, which has no judge); the first row is the reference."""
    out = summary.copy()
    out["vs"] = ""
    keys = VERDICT_KEYS + ((LIKED,) if LIKED in out else ())
    for k in keys:
        out[f"d {k}"] = float("nan")
        out[f"{k} verdict"] = ""
    for i in range(1, len(out)):
        j = i - 1 if compare == "previous" else 0
        out.loc[i, "vs"] = out.loc[j, "method"]
        for k in keys:
            if k not in out:
                continue
            if k == LIKED and (pd.isna(out.loc[i, k]) or pd.isna(out.loc[j, k])):
                out.loc[i, f"{k} verdict"] = NOT_JUDGED  # a classic baseline has no judge: nothing to compare
                continue
            d = out.loc[i, k] - out.loc[j, k]
            out.loc[i, f"d {k}"] = d
            out.loc[i, f"{k} verdict"] = spread_verdict(d, out.loc[i].get(f"{k} sd"), out.loc[j].get(f"{k} sd"))
    return out


def spread_verdict(d: float | None, sd_row: float | None, sd_ref: float | None) -> str:
    """``gain``/``loss`` when ``|d|`` exceeds ``sqrt(sd_row^2 + sd_ref^2)``, ``within spread`` when it
    does not, ``1 seed`` when either standard deviation is missing, ``failed`` when ``d`` is."""
    if d is None or pd.isna(d):
        return "failed"
    if sd_row is None or sd_ref is None or pd.isna(sd_row) or pd.isna(sd_ref):
        return "1 seed"
    if abs(d) > math.hypot(sd_row, sd_ref):
        return "gain" if d > 0 else "loss"
    return "within spread"


#: Verdicts on the per-seed differences of two rows run with the same seeds (:func:`seed_paired`).
SEED_GAIN, SEED_LOSS, SEED_WITHIN = "gain", "loss", "within spread"


def seed_paired(runs: list[dict[str, Any]], row: str, ref: str, key: str) -> dict[str, Any] | None:
    """The step from ``ref`` to ``row`` on ``key``, paired by seed: the per-seed differences
    ``row_s - ref_s`` over the seeds both rows ran (``runs``: one record per method and seed, as a
    table document's ``runs``). Rows of one seed share that seed's upstream stages (the DPO table's
    rows one SFT model, the SFT table's rows one tokenizer), so pairing removes their variation
    from the step; the spread of the step is then the sample standard deviation of the differences,
    and the rule is the one of :func:`spread_verdict`: a gain or a loss only when the mean difference
    exceeds it in size.

    Returns ``None`` with fewer than 2 shared seeds, else ``{"seeds", "d" (mean), "sd", "up", "down"
    (seeds whose difference is above / below 0), "p" (two-sided one-sample t-test of the differences
    against 0, :func:`scipy.stats.ttest_1samp`; 0 or 1 when they do not vary), "verdict"}``.
    """
    from scipy.stats import ttest_1samp

    values: dict[str, dict[int, float]] = {}
    for r in runs:
        v = r.get(key)
        failed = isinstance(r.get("error"), str) and r["error"]
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and not failed:
            values.setdefault(r["method"], {})[int(r["seed"])] = float(v)
    a, b = values.get(row, {}), values.get(ref, {})
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    p = float(ttest_1samp(diffs, 0.0).pvalue) if sd > 1e-12 else (1.0 if abs(mean) <= 1e-12 else 0.0)
    verdict = (SEED_GAIN if mean > 0 else SEED_LOSS) if abs(mean) > sd else SEED_WITHIN
    return {"seeds": len(seeds), "d": mean, "sd": sd, "up": sum(d > 0 for d in diffs),
            "down": sum(d < 0 for d in diffs), "p": p, "verdict": verdict}


def seed_paired_verdicts(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``summary`` after :func:`verdicts`, with each row's step against its reference (``vs``) also
    judged paired by seed (:func:`table_seed_paired`), where both ran at least 2 of the same seeds:
    ``<metric> paired sd``, ``<metric> paired up`` (e.g. ``"3/3"``), ``<metric> paired p`` and
    ``<metric> paired verdict`` for :data:`VERDICT_KEYS` (and :data:`LIKED` when judged)."""
    out = summary.copy()
    row_of = {method: i for i, method in enumerate(out["method"])}
    steps = table_seed_paired({"rows": out.to_dict("records"), "runs": runs.to_dict("records")})
    for (method, k), res in steps.items():
        i = row_of[method]
        out.loc[i, f"{k} paired sd"] = round(res["sd"], 6)
        out.loc[i, f"{k} paired up"] = f"{res['up']}/{res['seeds']}"
        out.loc[i, f"{k} paired p"] = round(res["p"], 4)
        out.loc[i, f"{k} paired verdict"] = res["verdict"]
    return out


#: One-seed verdicts judged on the same users (:func:`paired_verdicts`).
PAIRED_GAIN, PAIRED_LOSS, PAIRED_WITHIN = "gain (paired)", "loss (paired)", "within user noise"


def paired_verdicts(summary: pd.DataFrame, ranks: dict[str, dict[int, list[int]]], seed: int = 0) -> pd.DataFrame:
    """``summary`` after :func:`verdicts`, with each ``1 seed`` verdict on :data:`VERDICT_KEYS` judged on
    the same users instead, where both rows ran one seed, the same one, and kept their per-user test
    target ranks (``ranks``: ``{method: {seed: ranks}}``): the per-user difference's paired-bootstrap
    95% interval (:func:`align3gr_kit.metrics.paired_bootstrap`) says :data:`PAIRED_GAIN` or
    :data:`PAIRED_LOSS` when it excludes 0, else :data:`PAIRED_WITHIN`; ``<metric> ci low/high`` hold
    the interval and ``recall@10 p`` McNemar's exact p. A seed spread, where measured, is never replaced."""
    from align3gr_kit.metrics import paired_bootstrap, paired_hit_difference, per_user_metric

    out = summary.copy()
    for i in range(1, len(out)):
        a, b = ranks.get(out.loc[i, "vs"], {}), ranks.get(out.loc[i, "method"], {})
        if len(a) != 1 or set(a) != set(b):
            continue
        ra, rb = a[next(iter(a))], b[next(iter(b))]
        if ra is None or rb is None or len(ra) != len(rb) or not len(ra):
            continue
        for k in VERDICT_KEYS:
            if out.loc[i].get(f"{k} verdict") != "1 seed":
                continue
            va, vb = per_user_metric(ra, k), per_user_metric(rb, k)
            if k.startswith("recall@"):  # one bootstrap, plus McNemar's p on the same hits
                res = paired_hit_difference(va > 0, vb > 0, seed=seed)
                low, high = res["ci_low"], res["ci_high"]
                out.loc[i, f"{k} p"] = round(res["p"], 4)
            else:
                _, low, high = paired_bootstrap(va, vb, seed=seed)
            out.loc[i, f"{k} ci low"], out.loc[i, f"{k} ci high"] = round(low, 4), round(high, 4)
            out.loc[i, f"{k} verdict"] = PAIRED_GAIN if low > 0 else PAIRED_LOSS if high < 0 else PAIRED_WITHIN
    return out


def with_ratios(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with ``<metric> / SASRec`` for :data:`VERDICT_KEYS` when it has a SASRec row
    (above 1: ahead of SASRec); unchanged otherwise."""
    if RATIO_TO not in set(summary["method"]):
        return summary
    out = summary.copy()
    ref = out.set_index("method").loc[RATIO_TO]
    for k in VERDICT_KEYS:
        out[f"{k} / {RATIO_TO}"] = out[k] / ref[k] if ref[k] else float("nan")
    return out


def _has(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def judged_keys(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The metrics a table's steps are judged on: :data:`VERDICT_KEYS`, plus :data:`LIKED` when some
    row has a liked share (a number, not None or NaN: the classic baselines have no judge)."""
    return VERDICT_KEYS + ((LIKED,) if any(_has(r.get(LIKED)) for r in rows) else ())


def table_seed_paired(doc: dict[str, Any], pairs: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], dict]:
    """``{(row, metric): seed_paired(...)}`` for each row's step against its reference (``vs``), or for
    ``pairs`` of ``(row, reference)``, from the document's per-seed ``runs`` (so a table file written
    before this judgement existed is judged the same way); empty when no step has 2 shared seeds."""
    keys = judged_keys(doc["rows"])
    if pairs is None:
        pairs = [(r["method"], r["vs"]) for r in doc["rows"] if r.get("vs")]
    out = {}
    for row, ref in pairs:
        for k in keys:
            res = seed_paired(doc.get("runs", []), row, ref, k)
            if res is not None:
                out[(row, k)] = res
    return out
