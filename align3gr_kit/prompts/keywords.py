"""Keywords that describe the items (or users) carrying an SCID token.

Used by SA-Init (TS-Rec: a new token's embedding is the mean of the backbone's embeddings of
such keywords, :mod:`align3gr_kit.model.sa_init`) and by the optional TS-Align task (a token's
description). The extractor sits behind the small :class:`KeywordExtractor` interface so that an
LLM-based extractor (TS-Rec prompts an LLM for the keywords) can replace the TF-IDF default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from align3gr_kit.scid import ScidTable


class KeywordExtractor(Protocol):
    """Anything that turns documents into ranked keywords."""

    def extract(self, documents: Sequence[str], k: int, kind: str = "item") -> list[list[str]]:
        """Up to ``k`` keywords per document, most descriptive first (``[]`` for an empty document);
        ``kind`` (``item``/``user``) says what the document's lines describe."""
        ...


@dataclass
class TfidfKeywords:
    """TF-IDF keywords (scikit-learn ``TfidfVectorizer``): a token's document is the concatenated text
    of every row carrying it, so the top terms are those frequent for that token and rare for the
    others.

    Attributes:
        stop_words: ``english`` (sklearn's list) or ``None``.
        min_token_chars: shortest word kept (drops "of", "a", numbers-only words).
    """

    stop_words: str | None = "english"
    min_token_chars: int = 3

    def extract(self, documents: Sequence[str], k: int, kind: str = "item") -> list[list[str]]:
        """Top-``k`` TF-IDF terms of each document (``kind`` plays no part)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = [d or "" for d in documents]
        if not any(d.strip() for d in docs):
            return [[] for _ in docs]
        vec = TfidfVectorizer(
            stop_words=self.stop_words,
            token_pattern=rf"(?u)\b[^\W\d_]{{{self.min_token_chars},}}\b",
            sublinear_tf=True,
        )
        try:
            x = vec.fit_transform(docs).tocsr()
        except ValueError:  # every word was a stop word or too short: no vocabulary at all
            return [[] for _ in docs]
        terms = vec.get_feature_names_out()
        out: list[list[str]] = []
        for r in range(x.shape[0]):
            row = x.getrow(r)
            if row.nnz == 0:
                out.append([])
                continue
            # Highest weight first; equal weights in alphabetical order, so the result is deterministic.
            order = np.lexsort((terms[row.indices], -row.data))[:k]
            out.append([str(terms[row.indices[i]]) for i in order])
        return out


@dataclass
class TokenGroups:
    """Every SCID token of a table with the rows that carry it.

    Attributes:
        tokens: token strings in :meth:`ScidTable.vocabulary` order.
        levels: the SCID level of each token.
        rows: for each token, the ids of the items/users whose SCID holds it at that level.
    """

    tokens: list[str]
    levels: list[int]
    rows: list[np.ndarray]

    def documents(self, texts: Sequence[str]) -> list[str]:
        """One document per token: the texts of its rows joined by newlines."""
        return ["\n".join(texts[i] for i in r) for r in self.rows]


def token_groups(table: ScidTable, levels: int = 0) -> TokenGroups:
    """Group the rows of ``table`` by each of their SCID tokens (level, code); only the first ``levels``
    levels when ``levels > 0``."""
    n_levels = min(levels, table.levels) if levels > 0 else table.levels
    tokens, levels_, rows = [], [], []
    for lv in range(n_levels):
        col = table.codes[:, lv]
        for code in np.unique(col):
            tokens.append(table.level_token(lv, int(code)))
            levels_.append(lv)
            rows.append(np.flatnonzero(col == code))
    return TokenGroups(tokens, levels_, rows)


def token_keywords(
    table: ScidTable, texts: Sequence[str], k: int, extractor: KeywordExtractor | None = None, levels: int = 0
) -> dict[str, list[str]]:
    """``{token: keywords}`` for every token of ``table`` (of its first ``levels`` levels when > 0);
    ``texts[i]`` describes row ``i``."""
    if len(texts) != table.n:
        raise ValueError(f"token_keywords: {len(texts)} texts for {table.n} {table.kind}s; give one text per row")
    groups = token_groups(table, levels)
    kws = (extractor or TfidfKeywords()).extract(groups.documents(texts), k, kind=table.kind)
    return dict(zip(groups.tokens, kws))
