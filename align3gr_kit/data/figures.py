"""Tables and plotly figures of stage 00 (dataset statistics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split

FEEDBACK_LEVEL = {1: "disliked", 2: "neutral", 3: "neutral", 4: "liked", 5: "liked"}


def stats_table(ds: RecDataset, split: Split) -> pd.DataFrame:
    """One row of headline numbers: sizes, density, split sizes, history length, ratings."""
    n_inter = len(ds.interactions)
    row = {"dataset": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": n_inter,
           "density": n_inter / max(1, ds.n_users * ds.n_items), **split.stats(), "has_ratings": ds.has_ratings}
    return pd.DataFrame([row])


def sequence_length_figure(ds: RecDataset) -> go.Figure:
    """Histogram of interactions per user."""
    lengths = ds.interactions.groupby("user_id").size().rename("interactions per user").reset_index()
    fig = px.histogram(lengths, x="interactions per user", nbins=40, title=f"{ds.name}: sequence length per user")
    fig.update_layout(yaxis_title="users", bargap=0.05)
    return fig


def popularity_figure(ds: RecDataset) -> go.Figure:
    """Item popularity sorted descending (log y): the long tail."""
    counts = np.sort(np.bincount(ds.interactions.item_id, minlength=ds.n_items))[::-1]
    df = pd.DataFrame({"item rank": np.arange(1, len(counts) + 1), "interactions": counts})
    fig = px.line(df, x="item rank", y="interactions", log_y=True, title=f"{ds.name}: item popularity (long tail)")
    top = counts[: max(1, len(counts) // 10)].sum() / max(1, counts.sum())
    fig.add_annotation(x=0.5, y=0.95, xref="paper", yref="paper", showarrow=False,
                       text=f"top 10% of items hold {top:.1%} of interactions")
    return fig


def rating_figure(ds: RecDataset) -> go.Figure | None:
    """Rating counts coloured by the RF-DPO feedback level; None when the data carry no ratings."""
    if not ds.has_ratings:
        return None
    r = ds.interactions.rating.dropna().astype(int).value_counts().sort_index().rename_axis("rating").reset_index(name="count")
    r["feedback level"] = r.rating.map(FEEDBACK_LEVEL)
    return px.bar(r, x="rating", y="count", color="feedback level", title=f"{ds.name}: ratings and feedback levels",
                  color_discrete_map={"disliked": "#d62728", "neutral": "#bcbd22", "liked": "#2ca02c"})


def rating_table(ds: RecDataset) -> pd.DataFrame:
    """Counts and shares per rating (empty when there are no ratings)."""
    r = ds.interactions.rating.dropna().astype(int)
    counts = r.value_counts().sort_index()
    return pd.DataFrame({"rating": counts.index, "count": counts.to_numpy(),
                         "share": (counts / max(1, len(r))).to_numpy(),
                         "level": [FEEDBACK_LEVEL.get(int(x), "?") for x in counts.index]})


def example_users(ds: RecDataset, split: Split, n: int = 3, last: int = 5) -> pd.DataFrame:
    """The first ``n`` users: profile, the ``last`` most recent history titles, valid/test targets."""
    title = ds.items.title.to_numpy()
    rows = []
    for u in range(min(n, ds.n_users)):
        hist = split.test.history.iloc[u]
        rows.append({"user": ds.users.raw_id.iloc[u], "profile": ds.users.profile.iloc[u] or "(none)",
                     "recent history": " | ".join(title[i] or f"item {i}" for i in hist[:-1][-last:]),
                     "valid target": title[split.valid.target.iloc[u]] or f"item {split.valid.target.iloc[u]}",
                     "test target": title[split.test.target.iloc[u]] or f"item {split.test.target.iloc[u]}"})
    return pd.DataFrame(rows)


def format_example_users(examples: pd.DataFrame) -> str:
    """:func:`example_users` as readable text blocks, one per user."""
    blocks = []
    for r in examples.itertuples(index=False):
        blocks.append(f"user {r.user}: {r.profile}\n  recent history: {r._2}\n"
                      f"  valid target:   {r._3}\n  test target:    {r._4}")
    return "\n".join(blocks)
