"""User profile texts for datasets that have none, derived from each user's training-period items.

The paper's Amazon sets (and MiniOneRec's) carry item text but no user profiles, while dual SCIDs
(the user side of the semantic encoder), the user SCID in prompts and task B2 need one. The
profile built here reads only the user's **training sequence** of the leave-one-out split
(``split.train_sequences[u]`` = ``s[:n-2]``): the validation and test targets never enter it, so
nothing held out reaches the tokenizer or the prompts through the profile.

The rule, for a user whose training items are ``t_1 .. t_m`` (chronological):

1. **Categories**: every item's category labels (``categories``, or ``category`` when the list is
   empty), each label counted once per item. Labels carried by more than half of the catalogue's
   items (roots such as ``Musical Instruments``) say nothing about a user and are skipped. The
   ``n_categories`` most frequent are kept, ties broken by the most recent use, then by name.
2. **Brands**: the ``n_brands`` most frequent non-empty brands, same tie rule.
3. **Recent titles**: the titles of the ``n_titles`` most recent distinct items, newest first,
   each cut to ``title_words`` words.

The parts are written as ``Interested in: A, B, C. Brands: X, Y. Recently: T1; T2; T3.``; a part
with nothing to say is left out. The profile of a user whose training items carry no text is empty.
Which parts the catalogue can feed at all is said once (:func:`profile_fields`): recorded in
``extra["profile_fields"]`` and the stage-00 metrics, with a warning naming the missing ones (the
Amazon Industrial set has no categories, so its profiles have brands and titles only).

``data.user_profile`` chooses what the data stage does (:func:`apply_user_profiles`): ``given``
keeps the dataset's own profiles (and says so, with advice, when it has none), ``from_history``
replaces them by the profile above, ``none`` blanks them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from align3gr_kit.data.schema import DataError, RecDataset
from align3gr_kit.errors import DataWarning
from align3gr_kit.data.split import Split

PROFILE_MODES = ("given", "from_history", "none")
# What an item must carry to feed each profile part (for the warning naming a part no item can feed).
_WHAT = {"categories": "an informative category (one carried by at most half of the items)", "brands": "a brand",
         "titles": "a title"}


def item_labels(ds: RecDataset, max_share: float = 0.5) -> list[list[str]]:
    """Per item, its category labels that are informative (carried by at most ``max_share`` of items).

    Returns:
        ``n_items`` lists, in item-id order (empty where an item has no informative label).
    """
    raw = [list(c) if len(c) else ([cat] if cat else []) for c, cat in zip(ds.items.categories, ds.items.category)]
    freq = Counter(label for labels in raw for label in set(labels))
    limit = max_share * max(1, ds.n_items)
    return [[lb for lb in dict.fromkeys(labels) if freq[lb] <= limit] for labels in raw]


def _top(values: Iterable[tuple[int, str]], k: int) -> list[str]:
    """The ``k`` most frequent values of ``(position, value)`` pairs; ties: latest position, then name."""
    count: Counter = Counter()
    last: dict[str, int] = {}
    for pos, v in values:
        count[v] += 1
        last[v] = max(pos, last.get(v, -1))
    return sorted(count, key=lambda v: (-count[v], -last[v], v))[:k]


def history_profile(ds: RecDataset, items: Sequence[int], labels: list[list[str]] | None = None,
                    n_categories: int = 3, n_brands: int = 2, n_titles: int = 3, title_words: int = 12) -> str:
    """The profile text of one user from ``items`` (item ids, chronological), by the module's rule.

    Args:
        ds: the dataset (item text).
        items: the user's items, oldest first; pass the **training** sequence only.
        labels: :func:`item_labels` of ``ds`` (computed when ``None``; pass it when calling per user).
        n_categories / n_brands / n_titles: how many of each part to name.
        title_words: words kept per title.
    Returns:
        The profile, ``""`` when the items carry no text.
    """
    labels = item_labels(ds) if labels is None else labels
    items = [int(i) for i in items]
    brands = ds.items.brand.to_numpy()
    titles = ds.items.title.to_numpy()
    cats = _top(((p, lb) for p, i in enumerate(items) for lb in labels[i]), n_categories)
    top_brands = _top(((p, brands[i]) for p, i in enumerate(items) if brands[i]), n_brands)
    recent: list[str] = []
    for i in reversed(items):
        t = " ".join(str(titles[i]).split()[:title_words])
        if t and t not in recent:
            recent.append(t)
        if len(recent) == n_titles:
            break
    parts = []
    if cats:
        parts.append("Interested in: " + ", ".join(cats) + ".")
    if top_brands:
        parts.append("Brands: " + ", ".join(top_brands) + ".")
    if recent:
        parts.append("Recently: " + "; ".join(recent) + ".")
    return " ".join(parts)


def profile_fields(ds: RecDataset, labels: list[list[str]] | None = None) -> dict[str, int]:
    """How many items can feed each part of a history profile.

    Returns:
        ``{"categories": items with an informative label (:func:`item_labels`), "brands": items with
        a brand, "titles": items with a title}``; a part whose count is 0 is in no profile.
    """
    labels = item_labels(ds) if labels is None else labels
    return {"categories": sum(1 for lb in labels if lb),
            "brands": int((ds.items.brand.str.len() > 0).sum()),
            "titles": int((ds.items.title.str.len() > 0).sum())}


def history_profiles(ds: RecDataset, split: Split, **kwargs) -> list[str]:
    """Every user's profile from their training sequence only (``split.train_sequences``).

    Args:
        ds: the dataset; split: its leave-one-out split; ``kwargs``: see :func:`history_profile`.
    Returns:
        ``n_users`` strings, in user-id order.
    """
    labels = item_labels(ds)
    empty = np.zeros(0, dtype=np.int64)
    return [history_profile(ds, split.train_sequences.get(u, empty), labels, **kwargs) for u in range(ds.n_users)]


def apply_user_profiles(ds: RecDataset, split: Split, mode: str) -> RecDataset:
    """The dataset with ``users.profile`` as ``data.user_profile`` asks (call it right after the split).

    Args:
        ds: the loaded dataset; split: its leave-one-out split (the training part feeds the profiles).
        mode: ``given`` (keep the dataset's profiles; a warning with advice when there are none),
            ``from_history`` (the module's rule, replacing any given profile) or ``none`` (blank).
    Returns:
        A new :class:`RecDataset` (``ds`` is not modified); ``extra["user_profile"]`` records the mode,
        and with ``from_history`` ``extra["profile_fields"]`` the :func:`profile_fields` counts (a
        :class:`~align3gr_kit.errors.DataWarning` names the parts no item can feed).
    Raises:
        DataError: an unknown mode, or ``from_history`` on items without text (title or description)
            or without a title, category or brand.
    """
    if mode not in PROFILE_MODES:
        raise DataError(f"data.user_profile: unknown value {mode!r}; choose one of {', '.join(PROFILE_MODES)}")
    src = ds.source or ds.name
    users = ds.users.copy()
    if mode == "given":
        if ds.n_users and not users.profile.str.strip().any():
            warnings.warn(f"{src}: the dataset has no user profiles; user SCIDs from text and task B2 need one: set "
                          "data.user_profile: from_history (built from each user's training items), or use "
                          "item-only SCIDs (tokenizer.dual: false)", stacklevel=2)
        return dataclasses.replace(ds, extra={**ds.extra, "user_profile": mode})
    if mode == "from_history":
        fields = profile_fields(ds)
        used = [part for part, n in fields.items() if n]
        if not used or not ds.has_item_text:  # items without a title or description are no catalogue to profile
            raise DataError(f"{src}: data.user_profile: from_history builds profiles from item titles, categories "
                            "and brands, and these items have none; use data.user_profile: none (CF-only runs "
                            "need no profile) or give the items text")
        missing = [part for part, n in fields.items() if not n]
        if missing:
            warnings.warn(DataWarning(
                f"{src}: data.user_profile: from_history builds profiles from {' and '.join(used)} only; no item has "
                f"{' or '.join(_WHAT[p] for p in missing)} (of {ds.n_items} items), so no profile names "
                f"{' or '.join(missing)}"), stacklevel=2)
        users["profile"] = pd.Series(history_profiles(ds, split), index=users.index, dtype=str)
        return dataclasses.replace(ds, users=users, extra={**ds.extra, "user_profile": mode, "profile_fields": fields})
    users["profile"] = ""
    return dataclasses.replace(ds, users=users, extra={**ds.extra, "user_profile": mode})

