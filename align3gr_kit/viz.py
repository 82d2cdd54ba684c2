"""Figures, tables and the browser of the token-level notebooks (01_tokenize, 02_codebooks).

Everything here reads stage 01's outputs (:class:`align3gr_kit.tokenizer.artifacts.TokenizeArtifacts`)
so the notebooks stay call sites; :func:`dropdown_figure` is shared with the SCID views
(``tokenizer.views``) and the DPO explorer (``dpo.explorer``).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts


# ---------------------------------------------------------------------------------------- shared
def dropdown_figure(fig: go.Figure, groups: list[list[int]], labels: list[str], titles: list[str],
                    always: list[int] | None = None, x: float = 0.0, y: float = 1.22,
                    yanchor: str = "top") -> go.Figure:
    """Add a dropdown to ``fig`` that shows one group of traces at a time (precomputed, no kernel).

    Args:
        fig: a figure holding every group's traces.
        groups: per choice, the indices of its traces in ``fig.data``.
        labels: per choice, the dropdown's label.
        titles: per choice, the figure title shown with it.
        always: trace indices visible whatever the choice (a background).
    Returns:
        ``fig``, showing the first choice.
    """
    n = len(fig.data)
    keep = set(always or [])
    buttons = []
    for group, label, title in zip(groups, labels, titles):
        visible = [i in keep or i in group for i in range(n)]
        buttons.append({"label": label, "method": "update", "args": [{"visible": visible}, {"title.text": title}]})
    for i, trace in enumerate(fig.data):
        trace.visible = i in keep or (bool(groups) and i in groups[0])
    fig.update_layout(title_text=titles[0] if titles else "",
                      updatemenus=[{"buttons": buttons, "direction": "down", "x": x, "xanchor": "left", "y": y,
                                    "yanchor": yanchor, "showactive": True}])
    return fig


# ---------------------------------------------------------------------------------------- stage 01
def history_frame(history: list[dict]) -> pd.DataFrame:
    """The epoch log as a table (one row per epoch; missing quantities as NaN)."""
    return pd.DataFrame(history).astype({"epoch": int, "phase": int})


def loss_figure(history: list[dict]) -> go.Figure:
    """Total loss, L_U2I and the RQ losses per epoch, phase 2's start marked by a dashed line."""
    df = history_frame(history)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("total: α·L_U2I + γ·(L_UserRQ + L_ItemRQ)", "L_U2I",
                                                        "RQ-VAE losses"))
    fig.add_trace(go.Scatter(x=df.epoch, y=df.loss, mode="lines+markers", name="total"), 1, 1)
    fig.add_trace(go.Scatter(x=df.epoch, y=df.u2i, mode="lines+markers", name="L_U2I"), 1, 2)
    for col, name in (("item_rq", "L_ItemRQ"), ("user_rq", "L_UserRQ")):
        if df[col].notna().any():
            fig.add_trace(go.Scatter(x=df.epoch, y=df[col], mode="lines+markers", name=name), 1, 3)
    switch = _switch_epoch(df)
    for c in (1, 2, 3):
        if switch is not None:
            fig.add_vline(x=switch - 0.5, line_dash="dash", line_color="grey", row=1, col=c)
        fig.update_xaxes(title_text="epoch", row=1, col=c)
    title = "Two-phase training" + (f" (phase 2 from epoch {switch})" if switch is not None else " (phase 2 only)")
    fig.update_layout(title=title, height=380)
    return fig


def auc_figure(history: list[dict]) -> go.Figure:
    """Held-out U2I AUC per epoch (left axis) and raw item/user collisions in phase 2 (right axis)."""
    df = history_frame(history)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=df.epoch, y=df.auc, mode="lines+markers", name="held-out U2I AUC"), secondary_y=False)
    for col, name in (("item_collisions", "item collisions (before resolution)"),
                      ("user_collisions", "user collisions (before resolution)")):
        if df[col].notna().any():
            fig.add_trace(go.Scatter(x=df.epoch, y=df[col], mode="lines", name=name, line_dash="dot"), secondary_y=True)
    switch = _switch_epoch(df)
    if switch is not None:
        fig.add_vline(x=switch - 0.5, line_dash="dash", line_color="grey", annotation_text="switch to phase 2")
    fig.update_layout(title="U2I AUC on held-out (validation) pairs", height=380)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="AUC", secondary_y=False)
    fig.update_yaxes(title_text="colliding SCIDs", secondary_y=True)
    return fig


def _switch_epoch(df: pd.DataFrame) -> int | None:
    phase1 = df[df.phase == 1]
    return int(phase1.epoch.max()) + 1 if len(phase1) and (df.phase == 2).any() else None


def summary_table(summary: dict) -> pd.DataFrame:
    """Items and users side by side: codebook size, SCID length, collisions, utilisation, perplexity."""
    rows = []
    for side in ("item", "user"):
        if summary.get(f"{side}_levels") is None:
            continue
        rows.append({"side": side, "codebook size": summary[f"{side}_codebook_size"],
                     "SCID tokens": summary[f"{side}_levels"],
                     "collisions before": summary[f"{side}_collisions_before"],
                     "collisions after": summary[f"{side}_collisions"],
                     "utilisation per level": " / ".join(f"{u:.2f}" for u in summary[f"{side}_utilisation"]),
                     "perplexity per level": " / ".join(f"{p:.1f}" for p in summary[f"{side}_perplexity"])})
    return pd.DataFrame(rows)


def item_examples(ds: RecDataset, items: ScidTable, n: int = 6, width: int = 60) -> pd.DataFrame:
    """The first ``n`` items: SCID, title and ground-truth category (when known)."""
    df = ds.items.head(n)
    return pd.DataFrame({"item_id": df.item_id, "SCID": [items.string(i) for i in df.item_id],
                         "title": df.title.str.slice(0, width), "category": df.category})


def user_examples(ds: RecDataset, users: ScidTable, split: Split, n: int = 4, width: int = 70) -> pd.DataFrame:
    """The first ``n`` users: SCID, profile and their last training item."""
    rows = []
    for u in range(min(n, ds.n_users)):
        last = int(split.train_sequences[u][-1])
        rows.append({"user_id": u, "SCID": users.string(u), "profile": ds.users.profile.iloc[u][:width],
                     "last training item": ds.items.title.iloc[last][:40]})
    return pd.DataFrame(rows)


def shared_prefix_examples(ds: RecDataset, items: ScidTable, level: int = 1, n_groups: int = 2,
                           per_group: int = 4) -> pd.DataFrame:
    """Items grouped by a shared SCID prefix of ``level + 1`` codes (the largest groups first)."""
    prefix = [tuple(r) for r in items.codes[:, : level + 1]]
    s = pd.Series(prefix)
    groups = s.value_counts(sort=True).index[:n_groups]
    rows = []
    for g in groups:
        for i in np.flatnonzero(s.map(lambda p: p == g).to_numpy())[:per_group]:
            rows.append({"prefix": "".join(items.tokens(i)[: level + 1]), "item_id": int(i),
                         "SCID": items.string(i), "title": ds.items.title.iloc[i][:50]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- stage 02
def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """A seeded 2-D UMAP (cosine) of ``emb [n, d]``: ``[n, 2]``. Seeded UMAP runs single-threaded."""
    import umap

    n_neighbors = max(2, min(n_neighbors, len(emb) - 1))
    return umap.UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=seed, n_jobs=1).fit_transform(emb)


def embedding_figure(coords: np.ndarray, colour: pd.Series | np.ndarray, title: str,
                     hover: pd.Series | None = None, colour_name: str = "colour") -> go.Figure:
    """Scatter of 2-D coordinates coloured by a categorical label (codes are shown as labels too)."""
    df = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], colour_name: pd.Series(colour).astype(str).to_numpy()})
    if hover is not None:
        df["text"] = pd.Series(hover).astype(str).to_numpy()
    order = sorted(df[colour_name].unique(), key=lambda v: (len(v), v))
    fig = px.scatter(df, x="x", y="y", color=colour_name, hover_name="text" if hover is not None else None,
                     title=title, category_orders={colour_name: order}, height=450)
    fig.update_traces(marker_size=5)
    fig.update_layout(xaxis_title="UMAP 1", yaxis_title="UMAP 2")
    return fig


def user_main_category(ds: RecDataset, split: Split) -> pd.Series:
    """Each user's most frequent item category in their training sequence (ties: first in order)."""
    cats = ds.items.category.to_numpy()
    out = []
    for u in range(ds.n_users):
        vals = pd.Series(cats[split.train_sequences[u]])
        vals = vals[vals != ""]
        out.append(vals.value_counts().index[0] if len(vals) else "unknown")
    return pd.Series(out, name="main category")


def usage_figure(raw: np.ndarray, codebook_size: int, kind: str) -> go.Figure:
    """Per level, how many entities use each code (sorted), with the fraction of codes used."""
    levels = raw.shape[1]
    fig = make_subplots(rows=1, cols=levels, subplot_titles=[
        f"level {lv + 1}: {len(np.unique(raw[:, lv]))}/{codebook_size} codes used" for lv in range(levels)])
    for lv in range(levels):
        counts = np.sort(np.bincount(raw[:, lv], minlength=codebook_size))[::-1]
        fig.add_trace(go.Bar(x=np.arange(codebook_size), y=counts, name=f"level {lv + 1}", showlegend=False), 1, lv + 1)
        fig.update_xaxes(title_text="code (by use)", row=1, col=lv + 1)
    fig.update_layout(title=f"{kind} codebook usage per level", height=320)
    return fig


def collision_table(art: TokenizeArtifacts) -> pd.DataFrame:
    """Colliding rows and largest groups sharing a full SCID, before and after resolution."""
    rows = []
    for kind, raw, table_ in (("item", art.item_raw, art.items), ("user", art.user_raw, art.users)):
        if raw is None or table_ is None:
            continue
        _, counts = np.unique(raw, axis=0, return_counts=True)
        rows.append({"side": kind, "entities": len(raw), "collisions before": int(len(raw) - len(counts)),
                     "largest group before": int(counts.max()), "collisions after": table_.collisions(),
                     "SCID tokens after": table_.levels})
    return pd.DataFrame(rows)


def sunburst_figure(table_: ScidTable, labels: pd.Series | None = None, levels: int = 3,
                    max_leaves: int = 2000) -> go.Figure:
    """The SCID hierarchy as a sunburst: rings are levels, a wedge's size is its number of entities.

    ``labels`` (e.g. item titles) name the leaves when the full SCID is drawn; trees with more than
    ``max_leaves`` leaves are cut one level earlier so the figure stays light.
    """
    codes = table_.codes
    depth = min(levels, codes.shape[1])
    while depth > 1 and len(np.unique(codes[:, :depth], axis=0)) > max_leaves:
        depth -= 1
    df = pd.DataFrame({f"L{lv + 1}": [table_.level_token(lv, c) for c in codes[:, lv]] for lv in range(depth)})
    path = list(df.columns)
    if labels is not None and depth == codes.shape[1]:
        df["entity"] = pd.Series(labels).astype(str).str.slice(0, 40).to_numpy()
        path.append("entity")
    df["count"] = 1
    fig = px.sunburst(df, path=path, values="count", title=f"{table_.kind} SCID hierarchy ({depth} levels)",
                      height=600)
    return fig


def prefix_listing(table_: ScidTable, prefix: tuple[int, ...], names: pd.Series, limit: int = 20) -> pd.DataFrame:
    """Entities whose SCID starts with ``prefix`` (first ``limit``), with their SCID and name."""
    k = len(prefix)
    rows = np.flatnonzero((table_.codes[:, :k] == np.asarray(prefix)).all(axis=1)) if k else np.arange(table_.n)
    return pd.DataFrame({"id": rows[:limit], "SCID": [table_.string(i) for i in rows[:limit]],
                         "name": pd.Series(names).astype(str).to_numpy()[rows[:limit]]})


def prefix_browser(ds: RecDataset, art: TokenizeArtifacts, limit: int = 20):
    """An ipywidgets browser: pick items or users and a code prefix (level 1, then level 2), see who is under it."""
    import ipywidgets as w
    from IPython.display import display

    side = w.ToggleButtons(options=["item"] + (["user"] if art.users is not None else []), description="side")
    l1, l2 = w.Dropdown(description="level 1"), w.Dropdown(description="level 2")
    out = w.Output()

    def current():
        return (art.items, ds.items.title) if side.value == "item" else (art.users, ds.users.profile)

    def fill_l1(*_):
        t, _names = current()
        l1.options = [(t.level_token(0, c), int(c)) for c in np.unique(t.codes[:, 0])]
        if l1.value is None and l1.options:  # new options leave no selection: take the first code
            l1.value = l1.options[0][1]

    def fill_l2(*_):
        t, _names = current()
        under = t.codes[t.codes[:, 0] == l1.value] if l1.value is not None else t.codes[:0]
        l2.options = [("(any)", -1)] + [(t.level_token(1, c), int(c)) for c in np.unique(under[:, 1])]
        if l2.value is None:
            l2.value = -1

    def show(*_):
        if l1.value is None:  # options are being replaced: a value change fires before the new options settle
            return
        t, names = current()
        prefix = (l1.value,) if l2.value in (None, -1) else (l1.value, l2.value)
        with out:
            out.clear_output()
            sub = prefix_listing(t, prefix, names, limit)
            total = int((t.codes[:, : len(prefix)] == np.asarray(prefix)).all(axis=1).sum())
            print(f"{total} {t.kind}s under {''.join(t.level_token(i, c) for i, c in enumerate(prefix))}")
            print(sub.to_string(index=False))

    side.observe(lambda ch: (fill_l1(), fill_l2(), show()), names="value")
    l1.observe(lambda ch: (fill_l2(), show()), names="value")
    l2.observe(show, names="value")
    fill_l1()
    fill_l2()
    show()
    box = w.VBox([side, w.HBox([l1, l2]), out])
    display(box)
    return box


def code_category_nmi(codes: np.ndarray, labels: pd.Series | np.ndarray) -> float:
    """Normalised mutual information (sklearn) between first-level codes and known labels.

    Entities with an empty or ``unknown`` label are left out; ``nan`` when none is labelled.
    """
    from sklearn.metrics import normalized_mutual_info_score

    labels = pd.Series(labels).astype(str).to_numpy()
    keep = (labels != "") & (labels != "unknown")
    return float(normalized_mutual_info_score(labels[keep], codes[keep, 0])) if keep.any() else float("nan")
