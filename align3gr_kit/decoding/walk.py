"""The decoding walk: one user's constrained beam search, level by level, as tables and a figure.

What notebook 04 shows a class: the task-A prompt exactly as evaluation builds it (text and tokens), then
for each SCID level the tokens the item trie allows after every kept prefix, every candidate's cumulative
``log p(prefix | prompt)``, which candidates the beam keeps, how many catalogue items remain under each
prefix, and the final top K with titles and the held-out item marked.

The search is :func:`align3gr_kit.decoding.beam.constrained_beam_search` itself, run with ``trace=[]``
on the prompt :func:`align3gr_kit.evaluate.recommend` builds (same text, same token budget, same width),
so the walk's final list is that user's evaluated list: nothing here re-implements the search.

    decoding_walk(model, tokenizer, item_scids, user_scids, sample, titles, decode, ...) -> DecodingWalk
    decoding_walks(model, tokenizer, cfg, ds, split, item_scids, user_scids, n_users=5) -> list[DecodingWalk]
    walk_figure(walks) -> plotly Figure (a dropdown over the users; works in a static HTML report)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from align3gr_kit.config import DecodeConfig, RunConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.decoding.beam import BeamStep, constrained_beam_search
from align3gr_kit.decoding.trie import ItemTrie
from align3gr_kit.evaluate import evaluation_prompts, item_token_ids
from align3gr_kit.model.encoding import encode_prompts, left_pad
from align3gr_kit.scid import ScidTable


@dataclass
class DecodingWalk:
    """One user's constrained beam search, level by level.

    Attributes:
        user_id, split: whose prompt, from which split's samples.
        prompt: the task-A prompt text; prompt_ids: its token ids as the model reads them (chat frame
            included, cut to the SFT budget as in evaluation); prompt_tokens: each id decoded alone.
        history: ``position, item_id, title, scid`` (oldest first, position -1 = most recent).
        target: the held-out item id; target_scid its SCID string.
        candidates: one row per (level, kept parent, allowed token): ``level`` (1-based), ``parent_rank``
            (the parent's beam rank, 1 = best), ``prefix`` (the SCID so far, this token included),
            ``token``, ``log_prob`` (cumulative), ``kept``, ``rank`` (beam rank after the level, 0 when
            pruned), ``items_remaining`` (catalogue items under ``prefix``), ``on_target`` (``prefix``
            starts the target's SCID).
        allowed: one row per (level, kept parent): ``level``, ``parent_rank``, ``parent`` (prefix before the
            level), ``parent_log_prob``, ``items_under_parent``, ``n_allowed``, ``allowed`` (the tokens).
        levels: one row per level: beams in, candidates, kept, items still reachable through the kept
            prefixes, and the target prefix's rank among the candidates (0 = not a candidate).
        top: ``rank, item_id, title, scid, log_prob, target`` (the final list, best first).
    """

    user_id: int
    split: str
    prompt: str
    prompt_ids: list[int]
    prompt_tokens: list[str]
    history: pd.DataFrame
    target: int
    target_scid: str
    candidates: pd.DataFrame
    allowed: pd.DataFrame
    levels: pd.DataFrame
    top: pd.DataFrame

    @property
    def hit(self) -> bool:
        """Whether the held-out item is in the final list."""
        return bool(self.top.target.any())

    def allowed_summary(self, parents: int = 3, tokens: int = 8) -> pd.DataFrame:
        """:attr:`allowed` for the ``parents`` best prefixes of each level, each token list cut to its first
        ``tokens`` (a catalogue with 256 codes a level allows up to 256 tokens after a prefix)."""
        out = self.allowed[self.allowed.parent_rank <= parents].copy()
        out["allowed"] = [" ".join(a.split()[:tokens]) + (" ..." if n > tokens else "")
                          for a, n in zip(out.allowed, out.n_allowed)]
        return out

    def token_strip(self, width: int = 100) -> str:
        """The prompt's tokens as ``|``-separated pieces (newlines shown as ``⏎``), wrapped at ``width`` chars."""
        lines, line = [], ""
        for piece in self.prompt_tokens:
            piece = piece.replace("\n", "⏎") + "|"
            if line and len(line) + len(piece) > width:
                lines.append(line)
                line = ""
            line += piece
        return "\n".join([*lines, line])


def _scid_text(tokenizer, ids: Sequence[int]) -> str:
    return "".join(tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def decoding_walk(
    model,
    tokenizer,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    sample: pd.DataFrame,
    titles: Sequence[str],
    decode: DecodeConfig,
    user_scid_in_prompt: bool,
    max_length: int | None = None,
    k: int = 10,
    precision: str = "float32",
    split: str = "test",
    trie: ItemTrie | None = None,
) -> DecodingWalk:
    """Run one user's evaluation beam search with a trace and tabulate every level.

    Args:
        model, tokenizer, item_scids, user_scids: the SFT model as :func:`align3gr_kit.model.load_model` returns it.
        sample: one row of a split's samples (``user_id``, ``history``, ``target``).
        titles: item titles by item id.
        decode: ``beam_width`` as in evaluation; user_scid_in_prompt, max_length: as in
            :func:`align3gr_kit.evaluate.recommend` (the SFT ``max_length`` cuts the prompt the same way).
        k: length of the final list; precision: ``model.dtype`` (the autocast of the forwards).
        split: the split's name (for the tables); trie: the catalogue trie when the caller built it.
    Returns:
        :class:`DecodingWalk`.
    """
    if len(sample) != 1:
        raise ValueError(f"decoding_walk: sample must be one row of a split's samples, got {len(sample)} rows")
    trie = trie or ItemTrie(item_token_ids(tokenizer, item_scids))
    prompt = evaluation_prompts(sample, item_scids, user_scids, user_scid_in_prompt)[0]
    # the token budget recommend() gives a prompt: room for the SCID and its end token
    budget = None if max_length is None else max_length - item_scids.levels - 1
    ids = encode_prompts(tokenizer, [prompt], budget)[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, mask = left_pad([ids], pad)
    steps: list[BeamStep] = []
    res = constrained_beam_search(model, input_ids, mask, trie, beam_width=decode.beam_width, topk=k,
                                  precision=precision, trace=steps)

    user, target = int(sample.user_id.iloc[0]), int(sample.target.iloc[0])
    target_nodes = trie.item_nodes[target]
    cand_rows, allowed_rows, level_rows = [], [], []
    for step in steps:
        lv = step.level
        under_parent, under_child = trie.items_under(lv), trie.items_under(lv + 1)
        kept = {(int(p), int(s)): r + 1 for r, (p, s) in enumerate(zip(step.kept_parent[0], step.kept_slot[0]))}
        target_rank = 0
        order = step.scores[0].flatten().argsort(descending=True, stable=True).tolist()
        cand_rank = {divmod(i, step.tokens.shape[2]): r + 1 for r, i in enumerate(order)}
        for j, node in enumerate(step.parents[0].tolist()):
            parent_ids = trie.prefix_of(lv, node)
            toks = step.tokens[0, j]
            allowed = toks[toks >= 0].tolist()
            allowed_rows.append({"level": lv + 1, "parent_rank": j + 1, "parent": _scid_text(tokenizer, parent_ids),
                                 "parent_log_prob": float(step.parent_scores[0, j]),
                                 "items_under_parent": int(under_parent[node]), "n_allowed": len(allowed),
                                 "allowed": " ".join(tokenizer.convert_ids_to_tokens(allowed))})
            for c, tok in enumerate(allowed):
                child = int(trie.child_nodes[lv][node, c])
                on_target = child == int(target_nodes[lv + 1])
                if on_target:
                    target_rank = cand_rank[j, c]
                cand_rows.append({"level": lv + 1, "parent_rank": j + 1,
                                  "prefix": _scid_text(tokenizer, [*parent_ids, tok]),
                                  "token": tokenizer.convert_ids_to_tokens(tok),
                                  "log_prob": float(step.scores[0, j, c]), "kept": (j, c) in kept,
                                  "rank": kept.get((j, c), 0), "items_remaining": int(under_child[child]),
                                  "on_target": on_target})
        kept_nodes = step.kept_nodes[0]
        level_rows.append({"level": lv + 1, "beams_in": step.parents.shape[1],
                           "candidates": int((step.tokens[0] >= 0).sum()), "kept": len(kept),
                           "items_reachable": int(under_child[kept_nodes].sum()),
                           "target_candidate_rank": target_rank,
                           "target_kept": bool((kept_nodes == target_nodes[lv + 1]).any())})

    hist = [int(i) for i in sample.history.iloc[0]]
    history = pd.DataFrame({"position": range(-len(hist), 0), "item_id": hist,
                            "title": [titles[i] for i in hist], "scid": [item_scids.string(i) for i in hist]})
    top = pd.DataFrame([(r + 1, int(i), titles[int(i)], item_scids.string(int(i)), float(s), int(i) == target)
                        for r, (i, s) in enumerate(zip(res.items[0].tolist(), res.scores[0].tolist())) if i >= 0],
                       columns=["rank", "item_id", "title", "scid", "log_prob", "target"])
    return DecodingWalk(user, split, prompt, list(ids), [tokenizer.decode([i]) for i in ids], history, target,
                        item_scids.string(target), pd.DataFrame(cand_rows), pd.DataFrame(allowed_rows),
                        pd.DataFrame(level_rows), top)


def decoding_walks(
    model,
    tokenizer,
    cfg: RunConfig,
    ds: RecDataset,
    split: Split,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    users: Sequence[int] | None = None,
    n_users: int = 5,
    which: str = "test",
    k: int = 10,
    beam_width: int | None = None,
) -> list[DecodingWalk]:
    """The decoding walks of a few users of a split, decoded as stage 04 evaluates them.

    Args:
        cfg: the run's config (``decode``, ``prompts.user_scid_in_prompt``, ``sft.max_length``, ``model.dtype``).
        ds, split: the run's dataset (titles) and split (``00_data``).
        users: user ids to walk; ``None`` = the first ``n_users`` users of the split's samples.
        which: ``valid`` or ``test``; k: list length (at most the beam width).
        beam_width: beams kept per level; ``None`` = ``cfg.decode.beam_width`` (what evaluation used). A
            narrower beam shows what the search loses, with no retraining.
    Returns:
        One :class:`DecodingWalk` per user, in the order asked.
    """
    samples = split.samples(which)
    users = list(samples.user_id.iloc[:n_users]) if users is None else list(users)
    missing = [u for u in users if not (samples.user_id == u).any()]
    if missing:
        raise ValueError(f"decoding_walks: users {missing} have no {which} sample; pick ids from split.{which}.user_id")
    trie = ItemTrie(item_token_ids(tokenizer, item_scids))
    use_user = cfg.prompts.user_scid_in_prompt and user_scids is not None
    titles = ds.items.title.tolist()
    decode = cfg.decode if beam_width is None else replace(cfg.decode, beam_width=beam_width)
    k = min(k, decode.beam_width)  # the search returns at most beam_width items
    return [decoding_walk(model, tokenizer, item_scids, user_scids, samples[samples.user_id == u], titles, decode,
                          use_user, cfg.sft.max_length, k=k, precision=cfg.model.dtype, split=which, trie=trie)
            for u in users]


def _walk_traces(walk: DecodingWalk, max_pruned: int) -> list[go.Scatter]:
    """The five traces of one walk: pruned candidates, beam edges, kept beams, final list, target path."""
    c = walk.candidates
    kept, pruned = c[c.kept], c[~c.kept]
    shown = pruned.sort_values("log_prob", ascending=False).groupby("level").head(max_pruned)

    def hover(df: pd.DataFrame) -> list[str]:
        return [f"{p}<br>log p = {lp:.3f}<br>{n} item(s) remaining" + (f"<br>beam rank {r}" if r else "")
                for p, lp, n, r in zip(df.prefix, df.log_prob, df.items_remaining, df["rank"])]

    # an edge from every kept beam to its parent (the parent's beam rank at the level before)
    ex, ey = [], []
    for lv, rank, lp in zip(kept.level, kept.parent_rank, kept.log_prob):
        up = 0.0 if lv == 1 else float(kept[(kept.level == lv - 1) & (kept["rank"] == rank)].log_prob.iloc[0])
        ex += [lv - 1, lv, None]
        ey += [up, lp, None]
    last = int(c.level.max())
    final = kept[kept.level == last].sort_values("rank").head(len(walk.top))
    titles = dict(zip(walk.top.scid, walk.top.title))
    path = c[c.on_target]
    n_pruned = int((~c.kept).sum())
    return [
        go.Scatter(x=shown.level, y=shown.log_prob, mode="markers", hovertext=hover(shown), hoverinfo="text",
                   name=f"pruned ({len(shown)} best of {n_pruned} shown)" if len(shown) < n_pruned else "pruned",
                   marker={"color": "lightgray", "size": 6}),
        go.Scatter(x=ex, y=ey, mode="lines", hoverinfo="skip", name="beam edges",
                   line={"color": "rgba(31,119,180,0.35)", "width": 1}),
        go.Scatter(x=kept.level, y=kept.log_prob, mode="markers", hovertext=hover(kept), hoverinfo="text",
                   name="kept in the beam", marker={"color": "#1f77b4", "size": 8}),
        go.Scatter(x=final.level, y=final.log_prob, mode="markers+text", text=[str(r) for r in final["rank"]],
                   textposition="middle right", hoverinfo="text", name=f"final top {len(walk.top)}",
                   hovertext=[f"#{r} {titles.get(p, '')}<br>{p}<br>log p = {lp:.3f}"
                              for r, p, lp in zip(final["rank"], final.prefix, final.log_prob)],
                   marker={"color": "#2ca02c", "size": 11, "symbol": "diamond"}),
        go.Scatter(x=[0, *path.level], y=[0.0, *path.log_prob], mode="lines+markers", hoverinfo="text",
                   hovertext=["prompt", *hover(path)], name=f"held-out item {walk.target_scid}",
                   line={"color": "#d62728", "width": 2}, marker={"color": "#d62728", "size": 10, "symbol": "star"}),
    ]


def _title(walk: DecodingWalk) -> str:
    where = walk.top[walk.top.target]
    found = f"at rank {int(where['rank'].iloc[0])}" if len(where) else f"not in the top {len(walk.top)}"
    return f"Constrained beam search, {walk.split} user {walk.user_id}: held-out item {walk.target_scid} {found}"


def walk_figure(walks: Sequence[DecodingWalk], max_pruned: int = 300) -> go.Figure:
    """A beam-search tree per user, one user at a time through a dropdown (no kernel needed).

    x is the SCID level (0 = the prompt), y the cumulative ``log p(prefix | prompt)``; grey points are
    allowed continuations the beam pruned (the ``max_pruned`` best per level), blue ones the kept beams
    linked to their parents, green diamonds the final list with its ranks, the red line the held-out
    item's prefix as far as it was a candidate. Hover a point for its prefix and the catalogue items
    still under it.
    """
    if not walks:
        raise ValueError("walk_figure: no walks; pass the output of decoding_walks")
    fig = go.Figure()
    per = None
    for i, walk in enumerate(walks):
        traces = _walk_traces(walk, max_pruned)
        per = len(traces)
        for t in traces:
            t.visible = i == 0
            t.legendgroup = str(i)
            fig.add_trace(t)
    buttons = [{"label": f"user {w.user_id}" + (" (hit)" if w.hit else ""), "method": "update",
                "args": [{"visible": list(np.repeat(np.arange(len(walks)) == i, per))},
                         {"title.text": _title(w)}]} for i, w in enumerate(walks)]
    levels = int(walks[0].candidates.level.max())
    fig.update_layout(
        title=_title(walks[0]), height=560, xaxis_title="SCID level", yaxis_title="cumulative log p(prefix | prompt)",
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top"}],
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_xaxes(tickvals=list(range(levels + 1)), ticktext=["prompt", *[f"level {lv}" for lv in range(1, levels + 1)]],
                     range=[-0.2, levels + 0.6])
    return fig

