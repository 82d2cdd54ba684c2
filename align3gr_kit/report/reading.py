"""A plain-language reading of the report's tables, generated from the numbers.

Nothing here is decided in advance: every sentence compares values found in the tables (which rung
helped or hurt and by how much, where the full pipeline stands against SASRec and the other
baselines, what the DPO stages did) and says how far the measurement can be trusted (seeds, the
size of one user's hit, a smoke run).

A difference is called *within the seed spread* when it is no larger than the larger of the two
standard deviations over seeds; with a single seed no spread is measured and every non-zero
difference is reported as it is, with that caveat.

Layer: a writer; imports no module of :mod:`align3gr_kit.report` (nor of the kit).
"""

from __future__ import annotations

import math

import pandas as pd

FULL = "Align3GR (full)"
REFERENCE = "SASRec"
POPULARITY = "Popularity"


def _name(metric: str) -> str:
    return metric.replace("recall", "Recall").replace("ndcg", "NDCG")


def _sd(row: pd.Series, metric: str) -> float | None:
    v = row.get(f"{metric} sd")
    return None if v is None or pd.isna(v) else float(v)


def _noise(a: pd.Series, b: pd.Series, metric: str) -> float | None:
    sds = [s for s in (_sd(a, metric), _sd(b, metric)) if s is not None]
    return max(sds) if len(sds) == 2 else None


def _change(before: float, after: float) -> str:
    delta = after - before
    rel = f", {delta / before:+.0%}" if before else ""
    return f"{before:.4f} -> {after:.4f} ({delta:+.4f}{rel})"


def compare(a: float, b: float, noise: float | None = None) -> str:
    """``"above"``, ``"below"``, ``"level with"`` (equal) or ``"within the seed spread of"`` (|a-b| <= noise)."""
    if noise is not None and abs(a - b) <= noise and a != b:
        return "within the seed spread of"
    return "above" if a > b else "below" if a < b else "level with"


def ladder_reading(ladder: pd.DataFrame, metric: str = "recall@10") -> list[str]:
    """Sentences on the ladder: each rung's change of ``metric`` against the rung below it, the largest
    gain and drop, and the whole climb.

    Args:
        ladder: the ladder summary (``method`` in ladder order, ``metric`` means, optional ``"<metric> sd"``).
    """
    has = ladder[metric].notna() if metric in ladder else pd.Series(False, index=ladder.index)
    ok = [r for _, r in ladder[has].iterrows()]
    out = [f"Rung {m!r} produced no {_name(metric)} (its run failed; see the runs table)."
           for m in ladder.loc[~has, "method"]]
    if len(ok) < 2:
        return out + [f"Fewer than two rungs have {_name(metric)}: nothing to compare on the ladder."]
    deltas = []
    for prev, cur in zip(ok, ok[1:]):
        a, b = float(prev[metric]), float(cur[metric])
        verdict = {"above": "helped", "below": "hurt", "level with": "changed nothing",
                   "within the seed spread of": "moved it within the seed spread"}[compare(b, a, _noise(prev, cur, metric))]
        out.append(f"{cur['method']} (vs {prev['method']}): test {_name(metric)} {_change(a, b)}: {verdict}.")
        deltas.append((b - a, cur["method"]))
    gains = [d for d in deltas if d[0] > 0]
    drops = [d for d in deltas if d[0] < 0]
    helped = ", ".join(m for _, m in gains) or "none"
    hurt = ", ".join(m for _, m in drops) or "none"
    out.append(f"{len(gains)} of {len(deltas)} steps raised test {_name(metric)} ({helped}); "
               f"{len(drops)} lowered it ({hurt}).")
    if gains:
        d, m = max(gains)
        out.append(f"Largest gain: {m} ({d:+.4f}).")
    if drops:
        d, m = min(drops)
        out.append(f"Largest drop: {m} ({d:+.4f}).")
    first, last = ok[0], ok[-1]
    out.append(f"Whole ladder, {first['method']} -> {last['method']}: test {_name(metric)} "
               f"{_change(float(first[metric]), float(last[metric]))}.")
    return out


def baseline_reading(baselines: pd.DataFrame, metric: str = "recall@10", full: str = FULL,
                     reference: str = REFERENCE) -> list[str]:
    """Sentences on the baseline table: the ranking by ``metric``, the full pipeline against
    ``reference`` (SASRec) with the ratio, against every other method, and learned models that do not
    beat the popularity ranking."""
    t = baselines.dropna(subset=[metric]) if metric in baselines else baselines.iloc[:0]
    out = [f"{m!r} produced no {_name(metric)} (its run failed; see the runs table)."
           for m in baselines["method"] if m not in set(t["method"])]
    if t.empty:
        return out + ["No baseline produced metrics."]
    ranked = t.sort_values(metric, ascending=False, kind="stable")
    out.append(f"Ranking by test {_name(metric)}: " +
               ", ".join(f"{r['method']} {r[metric]:.4f}" for _, r in ranked.iterrows()) + ".")
    idx = t.set_index("method")
    if full in idx.index and reference in idx.index:
        f, r = idx.loc[full], idx.loc[reference]
        a, b = float(f[metric]), float(r[metric])
        where = compare(a, b, _noise(f, r, metric))
        ratio = f" (ratio {a / b:.2f})" if b else ""
        out.append(f"{full} is {where} {reference} on test {_name(metric)}: {a:.4f} vs {b:.4f}{ratio}.")
    if full in idx.index:
        f = idx.loc[full]
        others = [m for m in idx.index if m not in (full, reference)]
        parts = [f"{compare(float(f[metric]), float(idx.loc[m, metric]), _noise(f, idx.loc[m], metric))} {m}"
                 for m in others]
        if parts:
            out.append(f"{full} is " + "; ".join(parts) + ".")
    if POPULARITY in idx.index:
        pop = float(idx.loc[POPULARITY, metric])
        weak = [m for m in idx.index if m != POPULARITY and float(idx.loc[m, metric]) <= pop]
        if weak:
            out.append(f"Not above the popularity ranking ({pop:.4f}): {', '.join(weak)}.")
    return out


def stage_reading(stages: pd.DataFrame, metric: str = "recall@10", split: str = "test") -> list[str]:
    """Sentences on the full pipeline's models in training order (SFT, SP-DPO stages, RF-DPO stages):
    how each preference stage moved ``metric`` on ``split`` and where the last model ends."""
    col = f"{split} {metric}"
    t = stages.dropna(subset=[col]) if col in stages else stages.iloc[:0]
    if len(t) < 2:
        return [f"Only {len(t)} model(s) of the full pipeline have {split} {_name(metric)}: no stage-by-stage reading."]
    out = []
    values = t[col].astype(float).tolist()
    models = t["model"].tolist()
    for (m0, a), (m1, b) in zip(zip(models, values), zip(models[1:], values[1:])):
        out.append(f"{m1} (after {m0}): {split} {_name(metric)} {_change(a, b)}.")
    for prefix in ("SP-DPO", "RF-DPO"):
        part = [i for i, m in enumerate(models) if m.startswith(prefix)]
        if part:
            before = values[part[0] - 1] if part[0] > 0 else math.nan
            if not math.isnan(before):
                out.append(f"All {prefix} stages together: {_change(before, values[part[-1]])} (from {models[part[0] - 1]}).")
    out.append(f"SFT -> final model ({models[-1]}): {split} {_name(metric)} {_change(values[0], values[-1])}.")
    return out


def caveats(seeds: int, eval_users: int | None = None, smoke: bool = False) -> list[str]:
    """How much the numbers can carry: seeds, the size of one user's hit, smoke settings."""
    out = []
    if seeds <= 1:
        out.append("One seed per configuration: no spread over seeds is measured, so small differences "
                   "may be noise; run more seeds (`ablate --seeds 3`) before reading them as effects.")
    else:
        out.append(f"{seeds} seeds per configuration; a difference within the larger seed sd is called within the spread.")
    if eval_users:
        out.append(f"Metrics count {eval_users} test users: one user's hit moves Recall@K by {1 / eval_users:.4f}.")
    if smoke:
        out.append("Smoke config: tiny data, a tiny model and a few training steps. These numbers check that "
                   "the pipeline runs end to end; they say nothing about the method.")
    return out


def honest_reading(baselines: pd.DataFrame | None = None, ladder: pd.DataFrame | None = None,
                   stages: pd.DataFrame | None = None, metric: str = "recall@10", seeds: int = 1,
                   eval_users: int | None = None, smoke: bool = False) -> list[str]:
    """Every sentence of the report's reading: caveats first, then baselines, ladder and DPO stages
    (whichever tables are given). Returns a list of sentences (print them one per line)."""
    out = caveats(seeds, eval_users, smoke)
    if baselines is not None and len(baselines):
        out += baseline_reading(baselines, metric)
    if ladder is not None and len(ladder):
        out += ladder_reading(ladder, metric)
    if stages is not None and len(stages):
        out += stage_reading(stages, metric)
    return out
