"""Raw Amazon 2018 review files: ``<Category>_5.json[.gz]`` + ``meta_<Category>.json[.gz]``.

Reviews: one JSON object per line with ``reviewerID``, ``asin``, ``overall`` (1-5), ``unixReviewTime``.
Metadata: one object per line with ``asin``, ``title``, ``description`` (str or list), ``brand``,
``category`` (list). Older dumps write Python dict literals instead of JSON; those lines are read
with :func:`ast.literal_eval`, which parses literals only and never runs code (no ``eval``); a key
repeated within one record is refused (:mod:`align3gr_kit.data.textio`).
Duplicate (user, item) reviews keep the earliest (:func:`~align3gr_kit.data.schema.drop_repeat_events`,
which warns with the count); then an iterative k-core filter (default 5) on users and items, as
LC-Rec/LETTER preprocess. ``overall`` must be a finite number in 1..5 (``"nan"`` is refused).
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pandas as pd

from align3gr_kit.data.schema import (DataError, RecDataset, check_timestamp, drop_repeat_events, kcore_or_fail,
                                     make_items, make_users, reindex)
from align3gr_kit.data.textio import json_lines
from align3gr_kit.errors import bad_input

_TAG = re.compile(r"<[^>]+>")


def _records(path: Path):
    for n, rec in json_lines(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {n} is not an object (found {type(rec).__name__}); each line must "
                            "hold one record")
        yield n, rec


def _rating(value, path: Path, n: int) -> float:
    """``overall`` as a float in 1..5 (a numeric string such as ``"5.0"`` too); ``"nan"``, infinities and
    booleans are refused: a NaN rating would pass every later comparison silently."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise bad_input(path, f"line {n}", "overall", f"{value!r} is not a number",
                        "a rating is a number from 1 to 5: fix or delete the record")
    if not math.isfinite(number):
        raise bad_input(path, f"line {n}", "overall", f"{value!r} is not a finite number",
                        "a rating is a number from 1 to 5: fix or delete the record")
    if not 1 <= number <= 5:
        raise bad_input(path, f"line {n}", "overall", f"{value!r} is outside 1..5",
                        "a rating is a number from 1 to 5: fix or delete the record")
    return float(number)


def _review_time(value, path: Path, n: int) -> int:
    """``unixReviewTime`` as an int (an integral float or a digit string too) in the int64 range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_input(path, f"line {n}", "unixReviewTime", f"{value!r} is not an integer",
                        "write the review time as unix seconds: fix or delete the record")
    return check_timestamp(value, path, f"line {n}", "unixReviewTime")


def _find(path: Path, stem: str) -> Path:
    for suffix in (".json.gz", ".json"):
        p = path / f"{stem}{suffix}"
        if p.exists():
            return p
    raise DataError(f"{path}: {stem}.json[.gz] missing; download the category's 5-core reviews and "
                    "metadata from the Amazon Review Data (2018) page into this folder")


def _clean(text) -> str:
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    return " ".join(html.unescape(_TAG.sub(" ", str(text or ""))).split())


def load_amazon2018(path: str | Path, category: str, min_interactions: int = 5) -> RecDataset:
    """Read a category's raw reviews and metadata from ``path``, k-core filter (``min_interactions``,
    0 = 5), canonical form; the filter runs before the per-user minimum is checked."""
    path = Path(path)
    if not category:
        raise DataError(f"{path}: set data.name to the category file stem (e.g. Musical_Instruments)")
    reviews_path, meta_path = _find(path, f"{category}_5"), _find(path, f"meta_{category}")
    rows = []
    for n, r in _records(reviews_path):
        missing = [k for k in ("reviewerID", "asin", "overall", "unixReviewTime") if k not in r]
        if missing:
            raise DataError(f"{reviews_path}: line {n} lacks field(s) {missing}; every review needs "
                            "reviewerID, asin, overall and unixReviewTime")
        rows.append((str(r["reviewerID"]), str(r["asin"]), _review_time(r["unixReviewTime"], reviews_path, n),
                     _rating(r["overall"], reviews_path, n)))
    if not rows:
        raise DataError(f"{reviews_path}: the file holds no reviews; download the category's 5-core reviews "
                        "again (one JSON object per line)")
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    inter, repeats = drop_repeat_events(inter, str(reviews_path))

    meta, seen = [], set()
    for n, m in _records(meta_path):
        asin = m.get("asin")
        if not asin:
            raise DataError(f"{meta_path}: line {n} has no 'asin'; every metadata record needs one")
        if asin in seen:
            continue  # the 2018 metadata dump repeats some products verbatim
        seen.add(asin)
        cats = m.get("category", m.get("categories", [])) or []
        if cats and isinstance(cats[0], list):  # 2014 format: a list of category paths
            cats = cats[0]
        cats = [_clean(c) for c in cats if _clean(c)]
        meta.append({"raw_id": str(asin), "title": _clean(m.get("title")), "description": _clean(m.get("description")),
                     "categories": cats, "brand": _clean(m.get("brand")), "category": cats[1] if len(cats) > 1 else (cats[0] if cats else "")})
    items = make_items(meta, str(meta_path))
    inter = kcore_or_fail(inter, min_interactions or 5, str(reviews_path))
    users = make_users([{"raw_id": u} for u in sorted(inter["user"].unique())], str(reviews_path))
    items, users, interactions = reindex(items, users, inter, str(reviews_path))
    extra = {"repeat_events_dropped": repeats} if repeats else {}
    return RecDataset(category, items, users, interactions, source=str(path), extra=extra).validate()
