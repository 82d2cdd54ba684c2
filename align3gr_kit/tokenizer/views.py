"""The token level, shown on a finished run: the residual walk, the collision drill-down, the joint map.

Each view reads stage 01's artifacts (:class:`~align3gr_kit.tokenizer.artifacts.TokenizeArtifacts`)
and returns a plotly figure whose choices (an item, a user, a colliding group) are precomputed and
switched by a dropdown, so the figure stays interactive in a static HTML report without a kernel,
plus a pandas table of the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts
from align3gr_kit.viz import dropdown_figure


# ------------------------------------------------------------------------------ shared figure parts
def _table_trace(df: pd.DataFrame, **kw) -> go.Table:
    """A plotly table of ``df`` (all cells as text)."""
    return go.Table(header={"values": list(df.columns), "align": "left"},
                    cells={"values": [df[c].astype(str).tolist() for c in df.columns], "align": "left"}, **kw)


def _names(ds: RecDataset, side: str) -> np.ndarray:
    """Item titles or user profiles as a numpy array of str."""
    col = ds.items.title if side == "item" else ds.users.profile
    return col.astype(str).to_numpy()


def _side(art: TokenizeArtifacts, side: str) -> tuple[np.ndarray, np.ndarray, ScidTable]:
    """``(sc [n, d], raw codes [n, L], SCID table)`` of ``side``; raises when the run has no such side."""
    if side not in ("item", "user"):
        raise ValueError(f"side must be 'item' or 'user', got {side!r}")
    sc, raw, scids = (art.item_sc, art.item_raw, art.items) if side == "item" else (art.user_sc, art.user_raw, art.users)
    if raw is None or scids is None or sc is None:
        raise ValueError("this run has no user SCIDs (tokenizer.dual: false or a catalogue); use side='item'")
    return sc, raw, scids


# ------------------------------------------------------------------------------------ residual walk
@dataclass
class ResidualWalk:
    """What the RQ-VAE does to each entity, level by level.

    Attributes:
        side: ``item`` or ``user``.
        ids: ``[n]`` entity ids walked.
        z: ``[n, code_dim]`` the RQ-VAE encoder's output for the SC embedding (``r_0``).
        codes: ``[n, L]`` the chosen code per level (= the stored raw codes).
        residual_norms: ``[n, L + 1]`` ``||r_l||``: column 0 is ``||z||``, column ``l`` the residual left
            after level ``l`` (``r_l = r_{l-1} - e^l_{c_l}``).
        recon_error: ``[n]`` mean squared error between the SC embedding and the decoder's reconstruction
            from the quantised latent (the RQ-VAE's reconstruction loss per entity).
    """

    side: str
    ids: np.ndarray
    z: np.ndarray
    codes: np.ndarray
    residual_norms: np.ndarray
    recon_error: np.ndarray


@torch.no_grad()
def walk(art: TokenizeArtifacts, side: str = "item", ids: list[int] | np.ndarray | None = None) -> ResidualWalk:
    """Quantise the stored SC embeddings of ``ids`` (default: all) again with the stored RQ-VAE, keeping
    every level's residual. The SC embedding is the RQ-VAE's input; its encoder MLP makes ``z``, which
    the residual quantiser walks (nearest code by Euclidean distance, as
    :class:`~align3gr_kit.tokenizer.rqvae.ResidualQuantizer` does).

    Raises:
        RuntimeError: the recomputed codes differ from the stored raw codes (artifacts from another model).
    """
    sc, raw, _ = _side(art, side)
    ids = np.arange(len(sc)) if ids is None else np.asarray(ids, dtype=np.int64)
    model = art.rqvae(side)
    x = torch.as_tensor(sc[ids], dtype=torch.float32)
    z = model.encoder(x)
    residual, quantized = z, torch.zeros_like(z)
    norms, codes = [residual.norm(dim=1)], []
    for book in model.quantizer.codebooks:
        idx = torch.cdist(residual, book).argmin(dim=1)
        quantized = quantized + book[idx]
        residual = residual - book[idx]
        codes.append(idx)
        norms.append(residual.norm(dim=1))
    codes_np = torch.stack(codes, 1).numpy()
    if not np.array_equal(codes_np, raw[ids]):
        bad = ids[(codes_np != raw[ids]).any(1)]
        raise RuntimeError(f"{art.folder}: the stored RQ-VAE gives other codes than {side}_codes_raw.npy for "
                           f"{len(bad)} {side}(s) (first: {bad[0]}); the folder mixes files of different runs, "
                           "re-run stage 01_tokenize")
    recon = model.decoder(quantized)
    return ResidualWalk(side, ids, z.numpy(), codes_np, torch.stack(norms, 1).numpy(),
                        ((recon - x) ** 2).mean(dim=1).numpy())


def walk_table(art: TokenizeArtifacts, ds: RecDataset, side: str, entity: int, n_names: int = 4,
               n_nearest: int = 5) -> pd.DataFrame:
    """One entity's walk as rows: each RQ level, then the uniqueness level.

    Columns: ``level``, ``token``, ``residual norm`` (``||r_l||`` left after the level; the first row,
    ``z``, is ``||r_0||``), ``share prefix`` (entities of the same side whose SCID starts with the
    tokens so far, the entity included), ``sharing`` (items: the titles of up to ``n_names`` others
    under that prefix; users: their count, since user and item codebooks differ). The last row is the
    uniqueness digit (its index among the entities sharing all RQ codes, id order) with the
    reconstruction error. For a user whose SC space is shared with the items (same size), one more row
    names the ``n_nearest`` items by SC cosine.
    """
    sc, raw, scids = _side(art, side)
    w = walk(art, side, [entity])
    names = _names(ds, side)
    levels = raw.shape[1]
    rows = [{"level": "z = enc(SC)", "token": "", "residual norm": float(w.residual_norms[0, 0]),
             "share prefix": len(raw), "sharing": f"all {len(raw)} {side}s"}]
    for lv in range(levels):
        under = np.flatnonzero((raw[:, : lv + 1] == raw[entity, : lv + 1]).all(1))
        others = [i for i in under if i != entity]
        sharing = ("; ".join(names[i][:40] for i in others[:n_names]) + (" …" if len(others) > n_names else "")
                   if side == "item" else f"{len(others)} other users")
        rows.append({"level": f"{lv + 1}", "token": scids.level_token(lv, raw[entity, lv]),
                     "residual norm": float(w.residual_norms[0, lv + 1]), "share prefix": len(under),
                     "sharing": sharing or "none"})
    if scids.levels > levels:
        group = int((raw == raw[entity]).all(1).sum())
        rows.append({"level": "unique", "token": scids.level_token(levels, scids.codes[entity, levels]),
                     "residual norm": np.nan, "share prefix": 1,
                     "sharing": f"digit {scids.codes[entity, levels]} of {group} with these {levels} codes; "
                                f"reconstruction MSE {w.recon_error[0]:.4f}"})
    if side == "user" and art.item_sc is not None and art.item_sc.shape[1] == sc.shape[1]:
        near = nearest_items(art, [entity], n_nearest)[0]
        rows.append({"level": "nearest items", "token": "", "residual norm": np.nan, "share prefix": np.nan,
                     "sharing": "; ".join(_names(ds, "item")[i][:40] for i in near)})
    return pd.DataFrame(rows)


def residual_walk(art: TokenizeArtifacts, ds: RecDataset, side: str = "item",
                  ids: list[int] | None = None, n: int = 10) -> tuple[go.Figure, pd.DataFrame]:
    """The residual walk of ``n`` entities (default: the first ``n`` ids), one chosen by a dropdown.

    Left: ``||r_l||`` after each level (the bar after the last level is what no code explains);
    right: :func:`walk_table`. Returns ``(figure, table of every walked entity with an "id" column)``.
    """
    sc, raw, scids = _side(art, side)
    ids = list(range(min(n, len(sc)))) if ids is None else [int(i) for i in ids]
    names = _names(ds, side)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.3, 0.7], specs=[[{"type": "xy"}, {"type": "table"}]],
                        horizontal_spacing=0.06)
    groups, labels, titles, tables = [], [], [], []
    for e in ids:
        t = walk_table(art, ds, side, e)
        tables.append(t.assign(id=e))
        steps = t[t.level.str.fullmatch(r"z = enc\(SC\)|\d+")]
        fig.add_trace(go.Bar(x=["z"] + steps.token.tolist()[1:], y=steps["residual norm"], showlegend=False,
                             text=[f"{v:.3f}" for v in steps["residual norm"]], textposition="outside"), 1, 1)
        shown = t.assign(**{"residual norm": t["residual norm"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}"),
                            "share prefix": t["share prefix"].map(lambda v: "" if pd.isna(v) else str(int(v)))})
        fig.add_trace(_table_trace(shown, columnwidth=[1.1, 0.9, 1.0, 0.9, 4.5]), 1, 2)
        groups.append([len(fig.data) - 2, len(fig.data) - 1])
        labels.append(f"{side} {e}: {names[e][:30]}")
        titles.append(f"{side} {e} → {scids.string(e)}: {names[e][:60]}")
    fig.update_yaxes(title_text="residual norm ‖r‖", row=1, col=1)
    fig.update_xaxes(title_text="after level", row=1, col=1)
    fig.update_layout(height=460, margin={"t": 110})
    return dropdown_figure(fig, groups, labels, titles), pd.concat(tables, ignore_index=True)


# ------------------------------------------------------------------------------ collision drill-down
def collision_groups(art: TokenizeArtifacts, ds: RecDataset, side: str = "item") -> pd.DataFrame:
    """Every group of entities whose RQ codes collide, largest group first (ties: smallest first id).

    Columns: ``group`` (1 = largest), ``size``, ``shared codes`` (the tokens of the RQ levels), ``id``,
    ``digit`` (the uniqueness level each member got: its index in the group, id order), ``SCID``,
    ``name`` (title or profile). One row per member; empty when nothing collides.
    """
    _, raw, scids = _side(art, side)
    names = _names(ds, side)
    uniq, inverse, counts = np.unique(raw, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    colliding = np.flatnonzero(counts > 1)
    first = np.array([np.flatnonzero(inverse == g)[0] for g in colliding], dtype=np.int64)
    order = colliding[np.lexsort((first, -counts[colliding]))]
    levels = raw.shape[1]
    rows = []
    for rank, g in enumerate(order, start=1):
        shared = "".join(scids.level_token(lv, c) for lv, c in enumerate(uniq[g]))
        for i in np.flatnonzero(inverse == g):
            rows.append({"group": rank, "size": int(counts[g]), "shared codes": shared, "id": int(i),
                         "digit": int(scids.codes[i, levels]) if scids.levels > levels else None,
                         "SCID": scids.string(i), "name": names[i]})
    return pd.DataFrame(rows, columns=["group", "size", "shared codes", "id", "digit", "SCID", "name"])


def collision_drilldown(art: TokenizeArtifacts, ds: RecDataset, side: str = "item",
                        n_groups: int = 10) -> tuple[go.Figure, pd.DataFrame]:
    """The colliding groups: left, the sizes of the ``n_groups`` largest; right, the members of the one
    chosen in the dropdown (id, uniqueness digit, SCID, title). Returns ``(figure, collision_groups)``."""
    groups = collision_groups(art, ds, side)
    top = groups[groups.group <= n_groups]
    sizes = top.drop_duplicates("group")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], specs=[[{"type": "xy"}, {"type": "table"}]],
                        horizontal_spacing=0.08)
    total = groups.drop_duplicates("group")
    if not len(sizes):
        fig.add_annotation(text=f"no two {side}s share all their RQ codes", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        fig.update_layout(title_text=f"{side} collisions: none", height=300)
        return fig, groups
    fig.add_trace(go.Bar(x=sizes["shared codes"], y=sizes["size"], showlegend=False), 1, 1)
    trace_groups, labels, titles = [], [], []
    for g, members in top.groupby("group", sort=True):
        shown = members[["id", "digit", "SCID", "name"]].assign(name=members.name.str.slice(0, 60))
        fig.add_trace(_table_trace(shown, columnwidth=[0.5, 0.5, 1.6, 3.0]), 1, 2)
        trace_groups.append([len(fig.data) - 1])
        labels.append(f"#{g}: {members['shared codes'].iloc[0]} ({len(members)})")
        titles.append(f"{side} collision group {g} of {len(total)}: {len(members)} {side}s share "
                      f"{members['shared codes'].iloc[0]}; the last level tells them apart")
    fig.update_xaxes(title_text="shared RQ codes", tickangle=45, row=1, col=1)
    fig.update_yaxes(title_text=f"{side}s in the group", row=1, col=1)
    fig.update_layout(height=520, margin={"t": 110})
    return dropdown_figure(fig, trace_groups, labels, titles, always=[0]), groups


# ---------------------------------------------------------------------------------------- joint map
def nearest_items(art: TokenizeArtifacts, users: list[int] | np.ndarray, k: int = 10) -> np.ndarray:
    """``[len(users), k]`` item ids by decreasing cosine between the user's and the items' SC embeddings
    (the similarity L_U2I trains; both are unit-norm, so this is also increasing Euclidean distance)."""
    if art.user_sc is None or art.user_sc.shape[1] != art.item_sc.shape[1]:
        raise ValueError("users and items have no shared SC space in this run (no users, or different sizes)")
    u = art.user_sc[np.asarray(users, dtype=np.int64)]
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    it = art.item_sc / np.linalg.norm(art.item_sc, axis=1, keepdims=True)
    return np.argsort(-(u @ it.T), axis=1, kind="stable")[:, :k]


def project_2d(emb: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``[n, 2]`` coordinates of ``emb [n, d]``: ``pca`` (linear, instant: distances in the map follow
    the SC space's main directions) or ``umap`` (cosine, seeded; slower, keeps neighbourhoods)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, svd_solver="full", random_state=seed).fit_transform(emb)
    if method == "umap":
        from align3gr_kit.viz import umap_2d

        return umap_2d(emb, seed=seed)
    raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")


def _history_mark(split: Split | None, user: int, item: int) -> str:
    if split is None:
        return ""
    if item in set(split.train_sequences.get(user, np.zeros(0, int)).tolist()):
        return "trained on"
    for name in ("valid", "test"):
        df = split.samples(name)
        if ((df.user_id == user) & (df.target == item)).any():
            return f"{name} target"
    return ""


def joint_map(art: TokenizeArtifacts, ds: RecDataset, split: Split | None = None,
              users: list[int] | None = None, k: int = 10, method: str = "pca",
              other: TokenizeArtifacts | None = None, other_label: str = "without U-I alignment",
              seed: int = 0) -> tuple[go.Figure, pd.DataFrame]:
    """Users and items in one 2-D map of the shared SC space, with a chosen user's ``k`` nearest items.

    The map projects items and users together (:func:`project_2d`), so where users land among items
    shows the alignment; a dropdown picks one of ``users`` (default: the first 10) and rings its nearest
    items (by SC cosine in the full space, not in the map). With ``other`` (the artifacts of a run of
    the same data without U-I alignment), its map is drawn beside, the same user and its nearest items
    there marked.

    Returns ``(figure, table)``: per chosen user (and map), rank, item id, title, cosine and, with
    ``split``, whether the user trained on the item or has it as valid/test target.
    """
    users = list(range(min(10, len(art.user_sc) if art.user_sc is not None else 0))) if users is None else list(users)
    runs = [("this run", art)] + ([(other_label, other)] if other is not None else [])
    for label, a in runs:
        if a.item_sc is None or a.user_sc is None or len(a.item_sc) != ds.n_items or len(a.user_sc) != ds.n_users:
            raise ValueError(f"{label}: need SC embeddings of all {ds.n_items} items and {ds.n_users} users "
                             "of this dataset (a catalogue has no users; another run must use the same data)")
    titles, profiles = _names(ds, "item"), _names(ds, "user")
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=[f"{label} ({method.upper()})" for label, _ in runs],
                        horizontal_spacing=0.05)
    always, per_user, rows = [], [[] for _ in users], []
    for col, (label, a) in enumerate(runs, start=1):
        xy = project_2d(np.concatenate([a.item_sc, a.user_sc]), method, seed)
        ixy, uxy = xy[: ds.n_items], xy[ds.n_items:]
        fig.add_trace(go.Scattergl(x=ixy[:, 0], y=ixy[:, 1], mode="markers", name="items", legendgroup="items",
                                   showlegend=col == 1, hovertext=titles, hoverinfo="text",
                                   marker={"size": 5, "color": "#1f77b4", "opacity": 0.5}), 1, col)
        fig.add_trace(go.Scattergl(x=uxy[:, 0], y=uxy[:, 1], mode="markers", name="users", legendgroup="users",
                                   showlegend=col == 1, hovertext=[f"user {u}: {p[:60]}" for u, p in enumerate(profiles)],
                                   hoverinfo="text", marker={"size": 5, "color": "#ff7f0e", "opacity": 0.5}), 1, col)
        always += [len(fig.data) - 2, len(fig.data) - 1]
        near = nearest_items(a, users, k)
        sims = (a.user_sc[users] / np.linalg.norm(a.user_sc[users], axis=1, keepdims=True)) @ \
               (a.item_sc / np.linalg.norm(a.item_sc, axis=1, keepdims=True)).T
        for j, u in enumerate(users):
            fig.add_trace(go.Scatter(x=ixy[near[j], 0], y=ixy[near[j], 1], mode="markers",
                                     name=f"{k} nearest items", legendgroup="near", showlegend=col == 1,
                                     hovertext=[f"#{r + 1} {titles[i][:50]} (cos {sims[j, i]:.3f})"
                                                for r, i in enumerate(near[j])], hoverinfo="text",
                                     marker={"size": 11, "color": "rgba(0,0,0,0)",
                                             "line": {"color": "#2ca02c", "width": 2}}), 1, col)
            fig.add_trace(go.Scatter(x=[uxy[u, 0]], y=[uxy[u, 1]], mode="markers", name="chosen user",
                                     legendgroup="user", showlegend=col == 1, hovertext=[profiles[u][:80]],
                                     hoverinfo="text", marker={"size": 16, "symbol": "star", "color": "#d62728",
                                                               "line": {"color": "black", "width": 1}}), 1, col)
            per_user[j] += [len(fig.data) - 2, len(fig.data) - 1]
            rows += [{"map": label, "user": u, "rank": r + 1, "item": int(i), "title": titles[i],
                      "cosine": round(float(sims[j, i]), 4), "in split": _history_mark(split, u, int(i))}
                     for r, i in enumerate(near[j])]
    fig.update_layout(height=520, margin={"t": 110}, legend={"orientation": "h", "y": -0.08})
    labels = [f"user {u}: {profiles[u][:30]}" for u in users]
    heads = [f"Users and items in one SC map; user {u} and its {k} nearest items" for u in users]
    return dropdown_figure(fig, per_user, labels, heads, always=always), pd.DataFrame(rows)


# ------------------------------------------------------------------------------- prefixes (static)
def prefix_figure(art: TokenizeArtifacts, ds: RecDataset, side: str = "item", level: int = 1,
                  limit: int = 30) -> go.Figure:
    """Who sits under each SCID prefix of ``level`` codes: a dropdown over the prefixes (largest first),
    a table of up to ``limit`` members (id, SCID, title or profile). The static-report counterpart of
    :func:`align3gr_kit.viz.prefix_browser`, which needs a live kernel."""
    _, _, scids = _side(art, side)
    names = _names(ds, side)
    prefixes, inverse, counts = np.unique(scids.codes[:, :level], axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    fig = go.Figure()
    groups, labels, titles = [], [], []
    for g in np.argsort(-counts, kind="stable"):
        members = np.flatnonzero(inverse == g)
        token = "".join(scids.level_token(lv, c) for lv, c in enumerate(prefixes[g]))
        df = pd.DataFrame({"id": members[:limit], "SCID": [scids.string(i) for i in members[:limit]],
                           "name": [names[i][:70] for i in members[:limit]]})
        fig.add_trace(_table_trace(df, columnwidth=[0.5, 1.6, 3.5]))
        groups.append([len(fig.data) - 1])
        labels.append(f"{token} ({counts[g]})")
        titles.append(f"{counts[g]} {side}s under {token}" + (f" (first {limit} shown)" if counts[g] > limit else ""))
    fig.update_layout(height=560, margin={"t": 110})
    return dropdown_figure(fig, groups, labels, titles)
