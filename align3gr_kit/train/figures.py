"""Tables and plotly figures of stage 04 (SFT): loss curve, metrics, one user's recommendations."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from align3gr_kit.config import RunConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.scid import ScidTable

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


def user_recommendations(model, tokenizer, cfg: RunConfig, ds: RecDataset, split: Split, item_scids: ScidTable,
                         user_scids: ScidTable | None, user_id: int, which: str = "test", k: int = 10):
    """One user's history and top-``k`` list on a split, with titles.

    Returns:
        ``(history DataFrame [position, item_id, title, scid], recommendations DataFrame
        [rank, item_id, title, scid, log_prob, held_out], hit: bool)``; ``held_out`` marks the target.
    """
    from align3gr_kit.evaluate import recommend

    samples = split.samples(which)
    row = samples[samples.user_id == user_id]
    if row.empty:
        raise ValueError(f"user {user_id} has no {which} sample")
    use_user = cfg.prompts.user_scid_in_prompt and user_scids is not None
    items, scores = recommend(model, tokenizer, item_scids, user_scids, row, cfg.decode, use_user,
                              cfg.sft.max_length, k=k, progress=False)
    titles = ds.items.title
    hist = list(row.history.iloc[0])
    history = pd.DataFrame({"position": range(-len(hist), 0), "item_id": hist,
                            "title": [titles.iloc[i] for i in hist], "scid": [item_scids.string(i) for i in hist]})
    target = int(row.target.iloc[0])
    recs = [(r + 1, int(i), titles.iloc[int(i)], item_scids.string(int(i)), round(float(s), 4), int(i) == target)
            for r, (i, s) in enumerate(zip(items[0], scores[0])) if i >= 0]
    recs_df = pd.DataFrame(recs, columns=["rank", "item_id", "title", "scid", "log_prob", "held_out"])
    return history, recs_df, bool(recs_df.held_out.any())
