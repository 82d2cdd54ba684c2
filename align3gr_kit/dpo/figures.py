"""Tables and plotly figures of stages 05 (SP-DPO) and 06 (RF-DPO): example pairs, per-stage
training curves, the negatives' make-up, and metrics after every stage next to the start model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.dpo.artifacts import DPOArtifacts
from align3gr_kit.scid import ScidTable

CURVE_METRICS = ("loss", "rewards/margins", "rewards/accuracies")
RANK_METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "liked_share@10")


def _label(ds: RecDataset, scids: ScidTable, item: int, width: int = 40) -> str:
    title = str(ds.items.title.iloc[int(item)]) or f"item {item}"
    title = title if len(title) <= width else title[: width - 1] + "…"
    return f"{title} {scids.string(int(item))}"


def example_pairs(art: DPOArtifacts, ds: RecDataset, item_scids: ScidTable,
                  per_stage: int = 1, rejected: int = 3) -> pd.DataFrame:
    """The first ``per_stage`` examples of each stage: chosen and first rejected items with titles.

    Returns a long table ``stage, user, role, item, detail`` (one row per response). ``detail``: for the
    chosen item, ``next item`` (SP: the logged next item) or ``liked, next item`` / ``liked, shown item``
    (RF: whether the liked chosen item is the logged next item); for a rejected one, the semantic SCID
    levels it shares with the chosen item (SP) or the oracle's grade (RF).
    """
    rows = []
    for stage in art.stages:
        for ex in art.preferences(stage)[:per_stage]:
            rows.append({"stage": stage, "user": ex["user_id"], "role": "chosen",
                         "item": _label(ds, item_scids, ex["chosen_item"]), "detail": _chosen_detail(ex)})
            details = ex.get("rejected_levels") or [f"{o} shared level(s)" for o in ex.get("overlaps", [])]
            for item, detail in list(zip(ex["rejected_items"], details))[:rejected]:
                rows.append({"stage": stage, "user": ex["user_id"], "role": "rejected",
                             "item": _label(ds, item_scids, item), "detail": detail})
    return pd.DataFrame(rows, columns=["stage", "user", "role", "item", "detail"])


def _chosen_detail(ex: dict) -> str:
    is_next = ex.get("target") == ex["chosen_item"]
    if "rejected_levels" not in ex:  # SP: the chosen item is the logged next item by construction
        return "next item"
    return "liked, next item" if is_next else "liked, shown item"


def negatives_table(art: DPOArtifacts) -> pd.DataFrame:
    """Per stage: prompts that gave an example, mean rejected per example, and where the rejected items
    came from, as shares of all rejected: ``from beams`` (the policy's own beam: SP self-play, RF the
    items shown), for SP ``from ranked`` (the policy's best-scored items of the difficulty) and ``from
    catalogue`` (uniform fill) with the ``mean shared levels`` with the chosen item, for RF ``fallback``
    (not shown) and ``chosen = next item`` (share of examples whose liked chosen item is the logged next item)."""
    rows = []
    for stage in art.stages:
        ex = art.preferences(stage)
        n_rej = max(1, sum(len(e["rejected"]) for e in ex))
        n_beam = sum(e.get("from_beams", 0) for e in ex)
        row: dict[str, Any] = {"stage": stage, "prompts": len(ex),
                               "rejected/prompt": sum(len(e["rejected"]) for e in ex) / max(1, len(ex)),
                               "from beams": n_beam / n_rej}
        if ex and "overlaps" in ex[0]:
            n_ranked = sum(e.get("from_ranked", 0) for e in ex)
            row["from ranked"] = n_ranked / n_rej
            row["from catalogue"] = 1 - (n_beam + n_ranked) / n_rej
            row["mean shared levels"] = float(np.mean([o for e in ex for o in e["overlaps"]]))
        if ex and "rejected_levels" in ex[0]:
            row["fallback"] = 1 - n_beam / n_rej
            row["chosen = next item"] = float(np.mean([e.get("target") == e["chosen_item"] for e in ex]))
        rows.append(row)
    return pd.DataFrame(rows)


def preference_stats_table(metrics: dict[str, float]) -> pd.DataFrame:
    """One row per stage from the stage's flat ``<stage>/preferences/<statistic>`` metrics (how the
    pairs were built: prompts used and skipped, where the rejected responses came from)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[1] == "preferences":
            rows.setdefault(parts[0], {})[parts[2]] = value
    return pd.DataFrame.from_dict(rows, orient="index").reset_index(names="stage")


def training_curves(art: DPOArtifacts) -> pd.DataFrame:
    """Logged training statistics of every stage, long form: ``stage, step, run_step, metric, value``.

    ``run_step`` counts optimiser steps across the stages, so the curves of consecutive stages sit
    side by side on one axis.
    """
    rows, offset = [], 0
    for stage in art.stages:
        log = art.log_history(stage)
        last = 0
        for entry in log:
            for metric in CURVE_METRICS:
                if metric in entry:
                    rows.append({"stage": stage, "step": entry["step"], "run_step": offset + entry["step"],
                                 "metric": metric, "value": float(entry[metric])})
            last = max(last, int(entry.get("step", 0)))
        offset += last
    return pd.DataFrame(rows, columns=["stage", "step", "run_step", "metric", "value"])


def curves_figure(curves: pd.DataFrame, title: str) -> go.Figure:
    """Loss, reward margin and preference accuracy per optimiser step, one colour per stage."""
    fig = make_subplots(rows=1, cols=len(CURVE_METRICS), subplot_titles=CURVE_METRICS)
    colours = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd"]
    for s, stage in enumerate(dict.fromkeys(curves["stage"])):
        for c, metric in enumerate(CURVE_METRICS):
            d = curves[(curves.stage == stage) & (curves.metric == metric)]
            fig.add_trace(go.Scatter(x=d.run_step, y=d.value, mode="lines+markers", name=stage, legendgroup=stage,
                                     showlegend=c == 0, line={"color": colours[s % len(colours)]}), row=1, col=c + 1)
    fig.update_xaxes(title_text="optimiser step (all stages)")
    fig.update_layout(title=title, height=360)
    return fig


def metrics_table(history: dict[str, Any], start_label: str = "SFT") -> pd.DataFrame:
    """Recall/NDCG on valid and test for the start model and after every stage (rows in order).

    ``history``: :attr:`DPOArtifacts.history` (``{"start": metrics, "stages": [{"stage", "metrics"}]}``).
    """
    rows = [(start_label, history.get("start"))] + [(h["stage"], h.get("metrics")) for h in history["stages"]]
    out = []
    for label, metrics in rows:
        if not metrics:
            continue
        row: dict[str, Any] = {"model": label}
        for split_name in ("valid", "test"):
            for k in RANK_METRICS:
                if k in metrics.get(split_name, {}):
                    row[f"{split_name} {k}"] = float(metrics[split_name][k])
        out.append(row)
    return pd.DataFrame(out)


def metrics_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """NDCG@10 and Recall@10 on valid and test, model by model (start model first)."""
    fig = go.Figure()
    for col in [c for c in table.columns if c.endswith(("ndcg@10", "recall@10"))]:
        fig.add_trace(go.Scatter(x=table["model"], y=table[col], mode="lines+markers", name=col))
    fig.update_layout(title=title, xaxis_title="after stage", yaxis_title="metric", height=360)
    return fig


def training_rating_levels(dataset: RecDataset, split) -> pd.DataFrame:
    """How the logged ratings of every user's training items (``split.train_sequences``; validation and
    test ratings excluded) fall into the feedback levels (1 disliked, 2-3 neutral, 4-5 liked:
    :class:`align3gr_kit.feedback.RatingsOracle`): :func:`level_counts` of them."""
    from align3gr_kit.feedback.oracle import RatingsOracle

    pairs = [(int(u), int(i)) for u, seq in split.train_sequences.items() for i in seq]
    users, items = zip(*pairs) if pairs else ((), ())
    return level_counts(RatingsOracle(dataset).levels(list(users), list(items)))


def level_counts(levels: list[str | None]) -> pd.DataFrame:
    """Counts and shares of feedback levels (``None`` = the oracle cannot judge: ``unrated``)."""
    s = pd.Series(["unrated" if lv is None else lv for lv in levels], dtype="object")
    order = [lv for lv in ("disliked", "neutral", "liked", "unrated") if lv in set(s)]
    counts = s.value_counts().reindex(order)
    return pd.DataFrame({"level": order, "count": counts.to_numpy(), "share": (counts / max(1, len(s))).to_numpy()})
