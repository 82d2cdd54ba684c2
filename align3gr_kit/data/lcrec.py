"""LC-Rec / LETTER preprocessed Amazon sets: ``<name>.inter.json`` (+ ``.item.json``, ``.index.json``).

``<name>.inter.json`` maps a user index to their items in chronological order (already 5-core).
It carries no timestamps and no ratings: the position in the list is the time. Item indices may be
JSON integers or strings of ASCII digits (``["3557", "2660"]``, as some re-exports write them): both
name the same item (``"3557"`` is item ``3557``), so a string is read as the integer it spells; anything else
(``"B00X"``, ``-1``, ``3.0``) is refused naming the user and the value. ``<name>.item.json``
(optional) maps an item index to ``title``/``description``/``categories``/``brand``;
``<name>.index.json`` (optional) holds a published reference tokenization, kept in ``extra``.
An item repeated in a user's list keeps its first position (:func:`~align3gr_kit.data.schema.drop_repeat_events`,
which warns with the count); a repeated JSON key or an empty file is an error. ``data.min_interactions``
(the ``min_interactions`` argument) applies the iterative k-core filter before the per-user minimum
(3 events for leave-one-out) is checked, so a set with a few short users loads with it; without it an
empty user list is an error.
With ``<name>.item.json`` and no ``<name>.inter.json`` the result is a catalogue: every item, no
users, no interactions (for catalogue-only tokenization).

Text fields are cleaned as the LC-Rec/LETTER dumps need: a list, or a list stored as its Python
literal (``"['Relay kit ...']"``), is parsed with ``ast.literal_eval`` (literals only, never code)
and joined; HTML entities are unescaped; ``categories`` may be a list or one comma-separated string.
How many items carry each field is logged and kept in ``extra["item_fields"]``.
"""

from __future__ import annotations

import ast
import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from align3gr_kit.data.schema import (DataError, RecDataset, drop_repeat_events, item_field_counts, kcore_or_fail,
                                      make_interactions, make_items, make_users, reindex)
from align3gr_kit.data.textio import read_json
from align3gr_kit.errors import bad_input

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def _sort_key(k: str):
    return (0, int(k), k) if k.lstrip("-").isdigit() else (1, 0, k)


def _parsed(value):
    """``value``, or the list a string holds as a Python/JSON literal (``"['a', 'b']"``)."""
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        try:
            return ast.literal_eval(value.strip())  # literals only: never runs code, unlike eval
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value  # a text that merely looks like a list stays as written
    return value


def _text(value) -> str:
    """One clean string from a text field: lists (also as literals) joined, HTML entities unescaped."""
    value = _parsed(value)
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (_text(v) for v in value) if t)
    return html.unescape(str(value if value is not None else "")).strip()


def _categories(value) -> list[str]:
    """Categories from a list (nested lists flattened) or one comma-separated string, unescaped."""
    value = _parsed(value)
    if isinstance(value, str):  # LC-Rec stores categories as one comma-separated string
        value = value.split(",")
    out: list[str] = []
    for v in value if isinstance(value, (list, tuple)) else []:
        for c in (_categories(v) if isinstance(v, (list, tuple)) else [_text(v)]):
            if c and c not in out:
                out.append(c)
    return out


def _item_index(x) -> str | None:
    """An item index as its canonical string (``3557`` and ``"3557"`` both give ``"3557"``), or None
    when ``x`` is not a non-negative integer or a string of ASCII digits."""
    if isinstance(x, int) and not isinstance(x, bool) and x >= 0:
        return str(x)
    if isinstance(x, str) and x.isascii() and x.isdigit():
        return str(int(x))
    return None


def _describe(x) -> str:
    """``x`` and what kind of JSON value it is, for an error message (``'B00X' (a string)``)."""
    kind = {str: "a string", float: "a decimal number", bool: "a boolean", type(None): "null",
            list: "a list", dict: "an object"}.get(type(x), type(x).__name__)
    return f"{x!r} ({'a negative number' if isinstance(x, int) and not isinstance(x, bool) else kind})"


def load_lcrec(path: str | Path, name: str, min_interactions: int = 0) -> RecDataset:
    """Read ``<path>/<name>.inter.json`` (+ optional item/index files) into canonical form.

    ``min_interactions``: iterative k-core filter on users and items (``data.min_interactions``),
    applied before the per-user minimum is checked; 0 = none (the LC-Rec sets are already 5-core).
    """
    path = Path(path)
    if not name:
        found = sorted(p.name[: -len(".inter.json")] for p in path.glob("*.inter.json")) or \
            sorted(p.name[: -len(".item.json")] for p in path.glob("*.item.json"))
        if len(found) != 1:
            raise DataError(f"{path}: set data.name to the file prefix (found {found or 'no *.inter.json'})")
        name = found[0]
    inter_path = path / f"{name}.inter.json"
    item_path = path / f"{name}.item.json"
    if not inter_path.exists() and not item_path.exists():
        raise DataError(f"{inter_path}: file missing; pass the folder that holds {name}.inter.json "
                        "(e.g. --data-path ../shared/data/amazon-instruments --name Instruments)")
    seqs = _read_json(inter_path) if inter_path.exists() else {}
    if inter_path.exists() and not seqs:
        raise DataError(f"{inter_path}: the file holds no users ({{}}); it must map each user index to the "
                        "user's item indices in order, e.g. {\"0\": [3, 17, 5]}")
    users, items_, times = [], [], []
    for u in sorted(seqs, key=_sort_key):
        seq = seqs[u]
        if not isinstance(seq, list):
            raise DataError(f"{inter_path}: user {u!r}: the value must be a list of integer item indices (>= 0) "
                            f"in order, found {_describe(seq)[:80]}")
        ids = [_item_index(x) for x in seq]
        if None in ids:
            bad = seq[ids.index(None)]
            raise DataError(f"{inter_path}: user {u!r}: the value must be a list of integer item indices (>= 0, "
                            f"written 17 or \"17\"); item {_describe(bad)[:80]} at position {ids.index(None)} is not one")
        if not seq and not min_interactions:
            raise bad_input(inter_path, f"user {u!r}", "", "the item list is empty",
                            "every user needs at least 3 items (train, valid, test): remove the user, or set "
                            "data.min_interactions (a k-core filter, e.g. 5) to drop short users")
        users.extend([u] * len(seq))
        items_.extend(ids)
        times.extend(range(len(seq)))
    inter = pd.DataFrame({"user": users, "item": items_, "timestamp": times, "rating": np.nan})
    inter, repeats = drop_repeat_events(inter, str(inter_path))
    inter = kcore_or_fail(inter, min_interactions, str(inter_path))

    if item_path.exists():
        meta = _read_json(item_path)
        rows = []
        for k in sorted(meta, key=_sort_key):
            m = meta[k]
            if not isinstance(m, dict):
                raise DataError(f"{item_path}: item {k!r}: the value must be an object with title/description")
            cats = _categories(m.get("categories", []))
            title, desc = _text(m.get("title")), _text(m.get("description"))
            if not title and not desc:
                raise DataError(f"{item_path}: item {k!r} has neither 'title' nor 'description'; "
                                "every item needs a title or a description")
            rows.append({"raw_id": k, "title": title, "description": desc, "categories": cats,
                         "brand": _text(m.get("brand")),
                         # the root (e.g. "Musical Instruments") is shared by every item: take the next level
                         "category": cats[1] if len(cats) > 1 else (cats[0] if cats else "")})
    else:
        rows = [{"raw_id": k} for k in sorted(set(items_), key=_sort_key)]
    user_table = make_users([{"raw_id": u} for u in sorted(seqs, key=_sort_key)], str(inter_path), allow_empty=not seqs)
    if seqs:
        items, users_df, interactions = reindex(make_items(rows, str(item_path)), user_table, inter, str(inter_path))
    else:  # a catalogue: every item of the item file, nobody interacted
        items, users_df, interactions = make_items(rows, str(item_path)), user_table, make_interactions([], [], [])
    extra = {"item_fields": item_field_counts(items), **({} if seqs else {"catalogue": True})}
    if repeats:
        extra["repeat_events_dropped"] = repeats
    log.info("%s: %d items; items with each field: %s", item_path if item_path.exists() else inter_path,
             len(items), ", ".join(f"{k} {v}" for k, v in extra["item_fields"].items()))
    index_path = path / f"{name}.index.json"
    if index_path.exists():
        extra["reference_index"] = str(index_path)
    return RecDataset(name, items, users_df, interactions, source=str(path), extra=extra).validate()
