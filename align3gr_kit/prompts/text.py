"""Texts derived from the catalogue for the SFT tasks: intention queries (C2) and preference
summaries (C3).

The paper obtains both from an LLM; offline, they are derived deterministically from the items'
own fields (categories, brand, description/title words, a year in the title), which keeps them
faithful to the data and reproducible from the seed.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd

_WORD_RE = re.compile(r"[^\W\d_]{3,}")
_YEAR_RE = re.compile(r"\((1[89]\d\d|20\d\d)\)|\b(1[89]\d\d|20\d\d)\b")


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


STOP_WORDS = _stop_words()


def cut_words(text: str, n: int) -> str:
    """``text`` cut to its first ``n`` words (an ellipsis marks the cut); whitespace normalised."""
    words = str(text).split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def content_words(text: str) -> list[str]:
    """Lower-cased alphabetic words of 3+ letters that are not English stop words, first occurrence order."""
    seen: dict[str, None] = {}
    for w in _WORD_RE.findall(str(text).lower()):
        if w not in STOP_WORDS:
            seen.setdefault(w, None)
    return list(seen)


def title_year(title: str) -> int | None:
    """A four-digit year in a title (``"Heat (1995)"`` -> 1995), else ``None``."""
    m = _YEAR_RE.search(str(title))
    return int(m.group(1) or m.group(2)) if m else None


def common_words(texts: Sequence[str], max_share: float = 0.2) -> frozenset[str]:
    """Content words found in more than ``max_share`` of ``texts`` (boilerplate such as "features")."""
    df: Counter[str] = Counter()
    for t in texts:
        df.update(content_words(t))
    limit = max_share * max(1, len(texts))
    return frozenset(w for w, c in df.items() if c > limit)


def intention_query(item: pd.Series, rng: np.random.Generator, exclude: frozenset[str] = frozenset()) -> str:
    """A search-style query for an item, built from its own fields (task C2).

    Parts (each when available): one of its categories, up to two content words of the
    description (of the title when there is no description, at most one then, so the query does
    not simply spell the title), the brand (half of the time) and the decade of a year in the title.

    Args:
        item: a row of ``RecDataset.items``.
        rng: the task's generator (the choices above are drawn from it).
        exclude: words never used (catalogue boilerplate, see :func:`common_words`).
    Returns:
        e.g. ``"something in Drama about war and love from the 1990s"``.
    """
    parts = []
    cats = [c for c in item.categories if c]
    if cats:
        parts.append(f"in {cats[int(rng.integers(len(cats)))]}")
    words = [w for w in content_words(item.description) if w not in exclude]
    n_words = 2
    if not words:
        words = [w for w in content_words(item.title) if w not in exclude]
        n_words = 1
    if words:
        pick = sorted(rng.choice(len(words), size=min(n_words, len(words)), replace=False).tolist())
        parts.append("about " + " and ".join(words[i] for i in pick))
    brand_roll = rng.random()
    if item.brand and brand_roll < 0.5:
        parts.append(f"by {item.brand}")
    year = title_year(item.title)
    if year:
        parts.append(f"from the {year // 10 * 10}s")
    if not parts:
        return f"something like \"{item.title}\""
    return "something " + " ".join(parts)


def preference_summary(history: Sequence[int], items: pd.DataFrame, top: int = 3) -> str:
    """A preference summary of a history (task C3), from its items' categories and brands.

    Main interests are the ``top`` most frequent categories (ties: alphabetical); a favourite
    brand is named when one occurs at least twice; the most recent interest is the first
    category of the last item.

    Args:
        history: item ids, oldest first.
        items: ``RecDataset.items``.
    Returns:
        e.g. ``"Main interests: Drama, Comedy, Thriller. Favourite brand: Sony. Most recent interest: Action."``
    """
    cats: Counter[str] = Counter()
    brands: Counter[str] = Counter()
    for i in history:
        row = items.iloc[int(i)]
        cats.update(c for c in row.categories if c)
        if row.brand:
            brands[row.brand] += 1
    out = []
    if cats:
        ranked = sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        out.append("Main interests: " + ", ".join(c for c, _ in ranked) + ".")
    if brands:
        brand, count = sorted(brands.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if count >= 2:
            out.append(f"Favourite brand: {brand}.")
    last = items.iloc[int(history[-1])]
    last_cats = [c for c in last.categories if c]
    if last_cats:
        out.append(f"Most recent interest: {last_cats[0]}.")
    return " ".join(out)
