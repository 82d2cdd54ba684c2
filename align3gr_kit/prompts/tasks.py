"""The SFT tasks: each turns a set of source units (training samples, items, users, SCID tokens)
into prompt/completion rows.

A task is a :class:`Task` with ``units(ctx)`` (how many source units it has) and
``build(ctx, idx, rng)`` (rows for the chosen units ``idx``, in that order). The builder picks
``idx`` (cap, task mix) and owns the generator, so one seed fixes every choice. The random draws of
a row never depend on the user-SCID switch, so the same seed gives the same templates with and
without user SCIDs (the ablation compares like with like).

Leakage rule (what "no validation/test target in training data" means here). For a user with
chronological sequence ``s[0..n-1]``, the validation event is ``s[n-2]`` and the test event
``s[n-1]``. Every user-bound row is built from the training part ``s[:n-2]`` only:

* sequence tasks (A, C1-1, C1-2, C2, C3) come from ``Split.train`` samples: their history plus
  target is a contiguous window of ``s[:n-2]``;
* B2 rows use the user's profile and SCID only;
* item-centric rows (B1) carry the SCID of a user who interacted with that item in their training
  part; an item nobody has in a training part gets a user for whom it is neither the validation
  nor the test target.

Catalogue text (titles, descriptions, token descriptions in TS-Align) is not an interaction event
and may appear anywhere. An item id may legitimately recur in a sequence (re-consumption); the SCID
of a user's held-out item may therefore appear in that user's rows only if the item also occurs in
the training part. :func:`align3gr_kit.prompts.builder.find_leaks` checks exactly this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from align3gr_kit.config import PromptConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.prompts.keywords import KeywordExtractor, token_groups, token_keywords
from align3gr_kit.prompts.templates import TEMPLATES, user_fields
from align3gr_kit.prompts.text import common_words, cut_words, intention_query, preference_summary
from align3gr_kit.scid import ScidTable

Row = dict


@dataclass
class PromptContext:
    """Everything a task reads, with the per-row strings computed once.

    Attributes:
        ds: the dataset (items' text, users' profiles).
        split: the leave-one-out split (training samples and sequences).
        item_scids: item SCID table.
        user_scids: user SCID table, ``None`` for item-only tokenization.
        cfg: prompt settings.
        keyword_extractor: for TS-Align token descriptions (TF-IDF when ``None``; an extractor with an
            ``annotate`` method, :class:`~align3gr_kit.prompts.llm_keywords.LLMKeywords`, also gives each
            token a description).
    """

    ds: RecDataset
    split: Split
    item_scids: ScidTable
    user_scids: ScidTable | None
    cfg: PromptConfig
    keyword_extractor: KeywordExtractor | None = None
    b2_heldout: frozenset[int] = frozenset()  # users with no B2 rows (prompts.b2_holdout)
    item_str: list[str] = field(init=False)
    user_str: list[str] | None = field(init=False)
    titles: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if self.item_scids.n != self.ds.n_items:
            raise ValueError(
                f"item SCID table has {self.item_scids.n} rows but the dataset {self.ds.name!r} has "
                f"{self.ds.n_items} items; re-run the tokenize stage (01_tokenize) on this dataset"
            )
        if self.user_scids is not None and self.user_scids.n != self.ds.n_users:
            raise ValueError(
                f"user SCID table has {self.user_scids.n} rows but the dataset has {self.ds.n_users} users; "
                "re-run the tokenize stage (01_tokenize) on this dataset"
            )
        self.item_str = [self.item_scids.string(i) for i in range(self.item_scids.n)]
        self.user_str = None if self.user_scids is None else [self.user_scids.string(u) for u in range(self.user_scids.n)]
        self.titles = [str(t) for t in self.ds.items.title.tolist()]
        self._train_hist = [list(map(int, h)) for h in self.split.train.history.tolist()]
        self._train_user = self.split.train.user_id.to_numpy(np.int64)
        self._train_target = self.split.train.target.to_numpy(np.int64)

    @property
    def inject_user(self) -> bool:
        return bool(self.cfg.user_scid_in_prompt and self.user_str is not None)

    def user_fields(self, u: int) -> dict[str, str]:
        return user_fields(self.user_str[u] if self.inject_user and u >= 0 else None)

    def history_str(self, hist: list[int]) -> str:
        return ", ".join(self.item_str[i] for i in hist)

    def titles_str(self, hist: list[int]) -> str:
        recent = hist[-self.cfg.max_title_history:]
        return ", ".join(f"\"{self.titles[i]}\"" for i in recent)


def _row(task: str, variant: str, template: int, prompt: str, completion: str, user_id: int = -1,
         target: int = -1, history: list[int] | None = None) -> Row:
    return {"prompt": prompt, "completion": completion, "task": task, "variant": variant, "template": template,
            "user_id": int(user_id), "target": int(target), "history": list(history or [])}


def _pick(rng: np.random.Generator, key: str) -> tuple[int, str]:
    t = int(rng.integers(len(TEMPLATES[key])))
    return t, TEMPLATES[key][t]


# ---------------------------------------------------------------------------- sequence tasks
def _sample_units(ctx: PromptContext) -> int:
    return len(ctx._train_hist)


def _build_a(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    rows = []
    for j in idx:
        h, u, y = ctx._train_hist[j], int(ctx._train_user[j]), int(ctx._train_target[j])
        t, tpl = _pick(rng, "A")
        rows.append(_row("A", "history->scid", t, tpl.format(history=ctx.history_str(h), **ctx.user_fields(u)),
                         ctx.item_str[y], u, y, h))
    return rows


def _build_c11(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    rows = []
    for j in idx:
        h, u, y = ctx._train_hist[j], int(ctx._train_user[j]), int(ctx._train_target[j])
        t, tpl = _pick(rng, "C1-1")
        if not ctx.titles[y]:
            continue
        rows.append(_row("C1-1", "history->title", t, tpl.format(history=ctx.history_str(h), **ctx.user_fields(u)),
                         ctx.titles[y], u, y, h))
    return rows


def _build_c12(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    rows = []
    for j in idx:
        h, u, y = ctx._train_hist[j], int(ctx._train_user[j]), int(ctx._train_target[j])
        t, tpl = _pick(rng, "C1-2")
        shown = h[-ctx.cfg.max_title_history:]
        if not all(ctx.titles[i] for i in shown):
            continue
        rows.append(_row("C1-2", "titles->scid", t, tpl.format(titles=ctx.titles_str(h), **ctx.user_fields(u)),
                         ctx.item_str[y], u, y, shown))
    return rows


def _build_c2(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    rows = []
    items = ctx.ds.items
    boilerplate = common_words(items.description.tolist() + ctx.titles)
    for j in idx:
        u, y = int(ctx._train_user[j]), int(ctx._train_target[j])
        t, tpl = _pick(rng, "C2")
        query = intention_query(items.iloc[y], rng, boilerplate)
        rows.append(_row("C2", "query->scid", t, tpl.format(query=query, **ctx.user_fields(u)), ctx.item_str[y], u, y))
    return rows


def _build_c3(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    rows = []
    items = ctx.ds.items
    for j in idx:
        # The history *including* the sample's target: a summary of everything the user did up to t.
        h = ctx._train_hist[j] + [int(ctx._train_target[j])]
        h = h[-ctx.split.max_history:]
        u = int(ctx._train_user[j])
        t, tpl = _pick(rng, "C3")
        summary = preference_summary(h, items)
        if not summary:
            continue
        rows.append(_row("C3", "history->preferences", t, tpl.format(history=ctx.history_str(h), **ctx.user_fields(u)),
                         summary, u, -1, h))
    return rows


# ---------------------------------------------------------------------------- item alignment
def _item_users(ctx: PromptContext, rng: np.random.Generator) -> np.ndarray:
    """For each item, a user bound to its item-centric rows (the leakage rule in the module docstring)."""
    n_items = ctx.ds.n_items
    owners: list[list[int]] = [[] for _ in range(n_items)]
    for u, seq in sorted(ctx.split.train_sequences.items()):
        for i in np.unique(seq):
            owners[int(i)].append(int(u))
    held_out = {}
    for frame in (ctx.split.valid, ctx.split.test):
        for u, y in zip(frame.user_id.to_numpy(), frame.target.to_numpy()):
            held_out.setdefault(int(y), set()).add(int(u))
    all_users = np.arange(ctx.ds.n_users)
    out = np.empty(n_items, dtype=np.int64)
    for i in range(n_items):
        if owners[i]:
            out[i] = owners[i][int(rng.integers(len(owners[i])))]
        else:
            ok = np.setdiff1d(all_users, np.fromiter(held_out.get(i, ()), dtype=np.int64))
            out[i] = ok[int(rng.integers(len(ok)))] if len(ok) else -1
    return out


def _b1_units(ctx: PromptContext) -> int:
    return 3 * ctx.ds.n_items  # per item: title -> SCID, description -> SCID, SCID -> title


def _build_b1(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    owner = _item_users(ctx, rng)
    desc = ctx.ds.items.description.tolist()
    rows = []
    for j in idx:
        i, kind = divmod(int(j), 3)
        u = int(owner[i])
        uf = ctx.user_fields(u)
        if kind == 0:
            t, tpl = _pick(rng, "B1:title->scid")
            if ctx.titles[i]:
                rows.append(_row("B1", "title->scid", t, tpl.format(title=ctx.titles[i], **uf), ctx.item_str[i], u, i))
        elif kind == 1:
            t, tpl = _pick(rng, "B1:description->scid")
            if desc[i]:
                text = cut_words(desc[i], ctx.cfg.max_text_words)
                rows.append(_row("B1", "description->scid", t, tpl.format(description=text, **uf), ctx.item_str[i], u, i))
        else:
            t, tpl = _pick(rng, "B1:scid->title")
            if ctx.titles[i]:
                rows.append(_row("B1", "scid->title", t, tpl.format(item=ctx.item_str[i], **uf), ctx.titles[i], u, i))
    return rows


# ---------------------------------------------------------------------------- user alignment
def _b2_units(ctx: PromptContext) -> int:
    return 2 * ctx.ds.n_users if ctx.inject_user else 0


def _build_b2(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    profiles = ctx.ds.users.profile.tolist()
    rows = []
    for j in idx:
        u, kind = divmod(int(j), 2)
        key = "B2:profile->scid" if kind == 0 else "B2:scid->profile"
        t, tpl = _pick(rng, key)
        if not profiles[u] or u in ctx.b2_heldout:
            continue
        profile = cut_words(profiles[u], ctx.cfg.max_text_words)
        if kind == 0:
            rows.append(_row("B2", "profile->scid", t, tpl.format(profile=profile), ctx.user_str[u], u))
        else:
            rows.append(_row("B2", "scid->profile", t, tpl.format(**ctx.user_fields(u)), profile, u))
    return rows


# ---------------------------------------------------------------------------- TS-Align (TS-Rec)
def _ts_groups(ctx: PromptContext):
    tables = [(ctx.item_scids, [ctx.ds.item_text(i) for i in range(ctx.ds.n_items)])]
    if ctx.inject_user:
        tables.append((ctx.user_scids, ctx.ds.users.profile.tolist()))
    out = []
    annotate = getattr(ctx.keyword_extractor, "annotate", None)
    k = ctx.cfg.ts_align_keywords
    for table, texts in tables:
        groups = token_groups(table)
        if annotate is not None:  # an LLM extractor also writes each token's description
            notes = annotate(groups.documents(texts), kind=table.kind)
            kws, descs = [a.keywords[:k] for a in notes], [a.description for a in notes]
        else:
            found = token_keywords(table, texts, k, ctx.keyword_extractor)
            kws, descs = [found[t] for t in groups.tokens], [""] * len(groups.tokens)
        for tok, lv, rows, kw, desc in zip(groups.tokens, groups.levels, groups.rows, kws, descs):
            out.append((tok, lv, table.kind, kw, desc, rows))
    return out


def _ts_units(ctx: PromptContext) -> int:
    n = len(ctx.item_scids.vocabulary()) + (len(ctx.user_scids.vocabulary()) if ctx.inject_user else 0)
    return 2 * n


def _build_ts(ctx: PromptContext, idx: np.ndarray, rng: np.random.Generator) -> list[Row]:
    groups = _ts_groups(ctx)
    rows = []
    for j in idx:
        g, kind = divmod(int(j), 2)
        tok, lv, table_kind, kws, llm_description, members = groups[g]
        key = "TS-Align:token->text" if kind == 0 else "TS-Align:text->token"
        t, tpl = _pick(rng, key)
        if not kws:
            continue
        noun = "users" if table_kind == "user" else "items"
        about = ", ".join(kws)
        # The LLM extractor's sentence when it wrote one (TS-Rec's token description), else the keywords.
        description = f"{llm_description} Keywords: {about}" if llm_description else f"{noun} about {about}"
        if table_kind == "item":
            examples = [ctx.titles[i] for i in members[:2] if ctx.titles[i]]
            if examples:
                description += "; e.g. " + "; ".join(f"\"{e}\"" for e in examples)
        if kind == 0:
            rows.append(_row("TS-Align", "token->text", t, tpl.format(token=tok, noun=noun), description))
        else:
            level = f"{lv + 1} {table_kind}" if table_kind == "user" else str(lv + 1)
            prompt = tpl.format(level=level, about=about, noun=noun, Noun=noun.capitalize())
            rows.append(_row("TS-Align", "text->token", t, prompt, tok))
    return rows


@dataclass(frozen=True)
class Task:
    """One SFT task: its name, number of source units and row builder."""

    name: str
    units: Callable[[PromptContext], int]
    build: Callable[[PromptContext, np.ndarray, np.random.Generator], list[Row]]
    needs: str = ""


TASKS: dict[str, Task] = {
    "A": Task("A", _sample_units, _build_a),
    "B1": Task("B1", _b1_units, _build_b1, needs="item titles or descriptions"),
    "B2": Task("B2", _b2_units, _build_b2, needs="user SCIDs injected and user profiles"),
    "C1-1": Task("C1-1", _sample_units, _build_c11, needs="item titles"),
    "C1-2": Task("C1-2", _sample_units, _build_c12, needs="item titles"),
    "C2": Task("C2", _sample_units, _build_c2),
    "C3": Task("C3", _sample_units, _build_c3, needs="item categories or brands"),
    "TS-Align": Task("TS-Align", _ts_units, _build_ts, needs="item text"),
}


def rows_frame(rows: list[Row]) -> pd.DataFrame:
    """Rows as a DataFrame with the dataset's column order."""
    cols = ["prompt", "completion", "task", "variant", "template", "user_id", "target", "history"]
    return pd.DataFrame(rows, columns=cols)
