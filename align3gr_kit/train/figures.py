"""Tables and plotly figures of stage 04 (SFT): loss curve and metrics. One user's recommendations,
level by level, are the decoding walk (:mod:`align3gr_kit.decoding.walk`)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

RANK_METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def loss_curve(log_history: list[dict]) -> pd.DataFrame:
    """``step, loss, learning_rate, mean_token_accuracy`` from the trainer's log history."""
    rows = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
             "mean_token_accuracy": h.get("mean_token_accuracy")} for h in log_history if "loss" in h]
    return pd.DataFrame(rows, columns=["step", "loss", "learning_rate", "mean_token_accuracy"])


def loss_figure(curve: pd.DataFrame):
    """Training loss (completion tokens only) and learning rate against the optimiser step."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=curve.step, y=curve.loss, name="loss (completion tokens)", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=curve.step, y=curve.learning_rate, name="learning rate", line={"dash": "dot"}),
                  secondary_y=True)
    fig.update_layout(title="SFT training loss", xaxis_title="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="learning rate", secondary_y=True)
    return fig


def metrics_table(result: dict[str, Any], baselines: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per (model, split): Recall@K / NDCG@K, users and invalid outputs.

    Args:
        result: :class:`align3gr_kit.train.artifacts.SFTArtifacts` ``.metrics`` (``valid``/``test`` entries).
        baselines: optional ``{name: {"valid": metrics, "test": metrics}}`` (e.g. popularity).
    """
    rows = []
    for model, res in [("SFT", result), *((baselines or {}).items())]:
        for split in ("valid", "test"):
            if split in res:
                m = res[split]
                rows.append({"model": model, "split": split, **{k: float(m[k]) for k in RANK_METRICS if k in m},
                             "users": m.get("users", ""), "invalid": m.get("invalid", "")})
    return pd.DataFrame(rows)

