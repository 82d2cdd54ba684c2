"""Figures of the report stage: the ablation ladder and the baseline comparison.

Layer: a writer; imports no module of :mod:`align3gr_kit.report` (nor of the kit).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def ladder_figure(summary: pd.DataFrame, metrics: tuple[str, ...] = ("recall@10", "ndcg@10"), title: str = "") -> go.Figure:
    """Grouped bars, one group per rung (in ladder order), error bars = sd over seeds."""
    fig = go.Figure()
    for m in metrics:
        if m not in summary:
            continue
        sd = summary.get(f"{m} sd")
        fig.add_bar(name=m, x=summary["method"], y=summary[m],
                    error_y=dict(type="data", array=sd.fillna(0).tolist()) if sd is not None else None)
    fig.update_layout(barmode="group", title=title or "Ablation ladder (test split)", xaxis_title="",
                      yaxis_title="metric", xaxis_tickangle=-30, legend_title="")
    return fig


def comparison_figure(table: pd.DataFrame, metric: str = "recall@10", title: str = "") -> go.Figure:
    """Horizontal bars of one metric per method (``method`` and ``metric`` columns)."""
    t = table.dropna(subset=[metric]).sort_values(metric)
    fig = go.Figure(go.Bar(x=t[metric], y=t["method"], orientation="h", text=t[metric].round(4), textposition="outside"))
    fig.update_layout(title=title or f"{metric} on the test split", xaxis_title=metric, yaxis_title="")
    return fig
