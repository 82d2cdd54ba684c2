"""Raw Amazon 2018 review files: ``<Category>_5.json[.gz]`` + ``meta_<Category>.json[.gz]``.

Reviews: one JSON object per line with ``reviewerID``, ``asin``, ``overall`` (1-5), ``unixReviewTime``.
Metadata: one object per line with ``asin``, ``title``, ``description`` (str or list), ``brand``,
``category`` (list). Older dumps write Python dict literals instead of JSON; those lines are read
with :func:`ast.literal_eval`, which parses literals only and never runs code (no ``eval``).
Duplicate (user, item) reviews keep the earliest; then an iterative k-core filter (default 5)
on users and items, as LC-Rec/LETTER preprocess.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
from pathlib import Path
from typing import Iterator

import pandas as pd

from align3gr_kit.data.schema import DataError, RecDataset, kcore_filter, make_items, make_users, reindex

_TAG = re.compile(r"<[^>]+>")


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        with _open(path) as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        rec = ast.literal_eval(line)
                    except (ValueError, SyntaxError) as e:
                        raise DataError(f"{path}: line {n} is neither JSON nor a Python literal ({e}); "
                                        "each line must hold one record") from e
                if not isinstance(rec, dict):
                    raise DataError(f"{path}: line {n} is not an object")
                yield n, rec
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}; use the original (gzipped) dump") from e
    except (OSError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read ({e}); is the download complete?") from e


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
    """Read a category's raw reviews and metadata from ``path``, 5-core filter, canonical form."""
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
        try:
            rating, ts = float(r["overall"]), int(r["unixReviewTime"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{reviews_path}: line {n}: 'overall' must be a number and 'unixReviewTime' "
                            f"an integer ({e})") from e
        rows.append((str(r["reviewerID"]), str(r["asin"]), ts, rating))
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    inter = inter.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"], keep="first")

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
    inter = kcore_filter(inter, min_interactions or 5)
    if inter.empty:
        raise DataError(f"{reviews_path}: nothing is left after the {min_interactions or 5}-core filter")
    users = make_users([{"raw_id": u} for u in sorted(inter["user"].unique())], str(reviews_path))
    items, users, interactions = reindex(items, users, inter, str(reviews_path))
    return RecDataset(category, items, users, interactions, source=str(path)).validate()
