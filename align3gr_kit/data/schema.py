"""The one canonical in-memory form of a recommendation dataset.

Every loader returns a :class:`RecDataset`: three pandas tables with fixed columns and contiguous
integer ids (``item_id`` in ``0..n_items-1``, ``user_id`` in ``0..n_users-1``); ``raw_id`` keeps the
source's own id. Later stages only ever see this form.

items:         item_id, raw_id, title, description, categories (list[str]), brand, category
users:         user_id, raw_id, profile (text), attributes (dict[str, str])
interactions:  user_id, item_id, timestamp (int), rating (float, NaN when the source has none)

Bad input raises :class:`DataError` (from :mod:`align3gr_kit.errors`, re-exported here).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from align3gr_kit.errors import DataError, DataWarning, bad_input
from align3gr_kit.utils import atomic_path, write_json

ITEM_COLUMNS = ["item_id", "raw_id", "title", "description", "categories", "brand", "category"]
USER_COLUMNS = ["user_id", "raw_id", "profile", "attributes"]
INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]
# Timestamps are stored as int64 (unix time in the source's unit; only their order is used): a value
# outside this range cannot be stored and is refused where it is read, with its line.
TIMESTAMP_MIN, TIMESTAMP_MAX = 0, np.iinfo(np.int64).max


@dataclass
class RecDataset:
    """A dataset in canonical form (see the module docstring for the columns).

    Attributes:
        name: a short name (``synthetic``, ``ml-100k``, ``Instruments``...).
        items: one row per item, ``item_id`` contiguous from 0.
        users: one row per user, ``user_id`` contiguous from 0.
        interactions: one row per (user, item, time); chronological order is by ``timestamp``,
            ties broken by row order.
        source: where it was read from (a folder, or ``generated``).
    """

    name: str
    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    source: str = ""
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ properties
    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def has_ratings(self) -> bool:
        return bool(self.interactions["rating"].notna().any())

    @property
    def has_item_text(self) -> bool:
        return bool((self.items["title"].str.len() > 0).any() or (self.items["description"].str.len() > 0).any())

    def item_text(self, item_id: int) -> str:
        """Text for the semantic encoder: title, categories, brand, description."""
        row = self.items.iloc[item_id]
        parts = [row.title]
        if len(row.categories):
            parts.append("Categories: " + ", ".join(row.categories))
        if row.brand:
            parts.append("Brand: " + row.brand)
        if row.description:
            parts.append(row.description)
        return ". ".join(p for p in parts if p)

    def sequences(self) -> dict[int, np.ndarray]:
        """Each user's items in chronological order (stable: ties keep the input order)."""
        inter = self.interactions
        order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user_id"].to_numpy()))
        users = inter["user_id"].to_numpy()[order]
        items = inter["item_id"].to_numpy()[order]
        bounds = np.flatnonzero(np.diff(users)) + 1
        starts = np.concatenate([[0], bounds])
        return {int(users[s]): seq for s, seq in zip(starts, np.split(items, bounds))} if len(users) else {}

    # ------------------------------------------------------------------ validation
    def validate(self, min_user_interactions: int = 3) -> "RecDataset":
        """Check ids, columns and sizes; raise :class:`DataError` with the fix on failure."""
        src = self.source or self.name
        for table, cols in (("items", ITEM_COLUMNS), ("users", USER_COLUMNS), ("interactions", INTERACTION_COLUMNS)):
            missing = [c for c in cols if c not in getattr(self, table).columns]
            if missing:
                raise DataError(f"{src}: {table} table lacks column(s) {missing}; loaders must emit {cols}")
        for table, key, n in (("items", "item_id", self.n_items), ("users", "user_id", self.n_users)):
            ids = getattr(self, table)[key].to_numpy()
            if not np.array_equal(ids, np.arange(n)):
                raise DataError(f"{src}: {table}.{key} must be 0..{n - 1} in order (re-index after filtering)")
        inter = self.interactions
        if self.n_items == 0 or (inter.empty and not self.extra.get("catalogue")):
            raise DataError(f"{src}: the dataset has no interactions ({self.n_users} users, {self.n_items} "
                            "items); an interaction file must hold at least one user with items: check the file "
                            "and the filters")
        bad_items = inter.loc[(inter.item_id < 0) | (inter.item_id >= self.n_items)]
        if len(bad_items):
            r = bad_items.iloc[0]
            raise DataError(f"{src}: interaction of user {r.user_id} names unknown item {r.item_id}")
        bad_users = inter.loc[(inter.user_id < 0) | (inter.user_id >= self.n_users)]
        if len(bad_users):
            raise DataError(f"{src}: interaction names unknown user {bad_users.iloc[0].user_id}")
        counts = np.bincount(inter.user_id.to_numpy(), minlength=self.n_users)
        short = np.flatnonzero(counts < min_user_interactions)
        if len(short):
            u = int(short[0])
            raise DataError(
                f"{src}: user {self.users.raw_id.iloc[u]!r} has {counts[u]} interaction(s) (and {len(short) - 1} "
                f"more users have fewer than {min_user_interactions}); leave-one-out needs at least "
                f"{min_user_interactions} per user: apply a k-core filter (data.min_interactions: 5) or drop them"
            )
        repeated = inter.duplicated(["user_id", "item_id"])
        if repeated.any():
            r = inter[repeated].iloc[0]
            raise DataError(f"{src}: user {self.users.raw_id.iloc[r.user_id]!r} has item "
                            f"{self.items.raw_id.iloc[r.item_id]!r} more than once ({int(repeated.sum())} repeated "
                            "events); a target would also sit in the history: loaders keep the first event "
                            "(schema.drop_repeat_events)")
        ratings = inter.rating.dropna()
        if len(ratings) and ((ratings < 1) | (ratings > 5)).any():
            raise DataError(f"{src}: ratings must lie in 1..5; found {ratings[(ratings < 1) | (ratings > 5)].iloc[0]}")
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``items/users/interactions.parquet`` and ``dataset.json`` atomically into ``folder``."""
        folder = Path(folder)
        users = self.users.copy()
        users["attributes"] = users["attributes"].map(lambda a: json.dumps(a, sort_keys=True))
        for name, df in (("items", self.items), ("users", users), ("interactions", self.interactions)):
            with atomic_path(folder / f"{name}.parquet") as tmp:
                df.to_parquet(tmp, index=False)
        write_json(folder / "dataset.json", {"name": self.name, "source": self.source, "extra": self.extra})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RecDataset":
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        meta = json.loads((folder / "dataset.json").read_text())
        items = pd.read_parquet(folder / "items.parquet")
        items["categories"] = items["categories"].map(list)
        users = pd.read_parquet(folder / "users.parquet")
        users["attributes"] = users["attributes"].map(json.loads)
        inter = pd.read_parquet(folder / "interactions.parquet")
        return cls(meta["name"], items, users, inter, meta.get("source", ""), meta.get("extra", {}))


def make_items(rows: list[dict], source: str) -> pd.DataFrame:
    """Build the items table from dicts with at least ``raw_id`` and a title or a description."""
    if not rows:
        raise DataError(f"{source}: no items (the file is empty or holds no item records); "
                        "the item table needs one record per item")
    df = pd.DataFrame(rows)
    for col, default in (("title", ""), ("description", ""), ("brand", ""), ("category", "")):
        if col not in df:
            df[col] = default
        df[col] = df[col].fillna(default).astype(str)
    if "categories" not in df:
        df["categories"] = [[] for _ in range(len(df))]
    df["categories"] = df["categories"].map(lambda c: list(c) if isinstance(c, (list, tuple, np.ndarray)) else [])
    df["raw_id"] = df["raw_id"].astype(str)
    dup = df["raw_id"].duplicated()
    if dup.any():
        raise DataError(f"{source}: duplicate item id {df.raw_id[dup].iloc[0]!r}; every item id must be unique")
    df.insert(0, "item_id", np.arange(len(df), dtype=np.int64))
    return df[ITEM_COLUMNS].reset_index(drop=True)


def make_users(rows: list[dict], source: str, allow_empty: bool = False) -> pd.DataFrame:
    """Build the users table from dicts with ``raw_id``, optional ``profile`` and ``attributes``
    (``allow_empty``: a catalogue without users)."""
    if not rows and not allow_empty:
        raise DataError(f"{source}: no users (the file is empty or holds no user records); "
                        "the user table needs one record per user")
    df = pd.DataFrame(rows) if rows else pd.DataFrame({"raw_id": []})  # a catalogue has no users
    if "profile" not in df:
        df["profile"] = ""
    if "attributes" not in df:
        df["attributes"] = [{} for _ in range(len(df))]
    df["raw_id"] = df["raw_id"].astype(str)
    dup = df["raw_id"].duplicated()
    if dup.any():
        raise DataError(f"{source}: duplicate user id {df.raw_id[dup].iloc[0]!r}; every user id must be unique")
    df["profile"] = df["profile"].fillna("").astype(str)
    df.insert(0, "user_id", np.arange(len(df), dtype=np.int64))
    return df[USER_COLUMNS].reset_index(drop=True)


def item_field_counts(items: pd.DataFrame) -> dict[str, int]:
    """How many items carry a non-empty ``title``, ``description``, ``brand`` and ``categories``."""
    counts = {c: int((items[c].str.len() > 0).sum()) for c in ("title", "description", "brand")}
    counts["categories"] = int(items["categories"].map(len).gt(0).sum())
    return counts


def make_interactions(user_id, item_id, timestamp, rating=None, source: str = "interactions") -> pd.DataFrame:
    """Build the interactions table from aligned arrays (``rating`` None = no ratings)."""
    n = len(user_id)
    try:
        ts = np.asarray(timestamp, dtype=np.int64)
    except (OverflowError, ValueError, TypeError) as e:
        raise DataError(f"{source}: a timestamp does not fit a 64-bit integer ({e}); loaders check "
                        f"timestamps with schema.check_timestamp, which names the line") from None
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_id, dtype=np.int64),
            "item_id": np.asarray(item_id, dtype=np.int64),
            "timestamp": ts,
            "rating": np.full(n, np.nan) if rating is None else np.asarray(rating, dtype=np.float64),
        }
    )


def check_timestamp(value: int, path: str | Path, where: str, field: str = "timestamp") -> int:
    """``value`` if it lies in ``TIMESTAMP_MIN..TIMESTAMP_MAX``, else a located :class:`DataError`."""
    if not TIMESTAMP_MIN <= value <= TIMESTAMP_MAX:
        raise bad_input(path, where, field, f"{value} is outside {TIMESTAMP_MIN}..{TIMESTAMP_MAX} (a unix time "
                        "that fits 64 bits)", "write the time as unix seconds (a 10-digit number today)")
    return value


def drop_repeat_events(inter: pd.DataFrame, source: str, user_col: str = "user",
                       item_col: str = "item") -> tuple[pd.DataFrame, int]:
    """Keep each (user, item) pair's first event and drop its repeats, warning with the count.

    The rule of every loader: the first event is the earliest ``timestamp``, ties broken by file
    order (Amazon 2018 preprocessing in LC-Rec/LETTER keeps the earliest review the same way). A
    repeat kept in the data would put a leave-one-out target into the user's own history.

    Returns:
        ``(rows in their original order without the repeats, number dropped)``.
    """
    chrono = inter.sort_values("timestamp", kind="stable")
    repeat = chrono.duplicated([user_col, item_col], keep="first")
    n = int(repeat.sum())
    if n:
        r = chrono[repeat].iloc[0]
        warnings.warn(DataWarning(
            f"{source}: dropped {n} repeated (user, item) event(s), keeping each pair's first (e.g. user "
            f"{r[user_col]!r}, item {r[item_col]!r}); a target must never also sit in the history"), stacklevel=2)
        inter = inter.drop(index=chrono.index[repeat])
    return inter, n


def kcore_filter(inter: pd.DataFrame, k: int, user_col: str = "user", item_col: str = "item") -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions until none is left.

    Works on raw ids (before re-indexing). Returns the filtered rows in their original order.
    """
    if k <= 1:
        return inter
    df = inter
    while True:
        ucount = df[user_col].map(df[user_col].value_counts())
        icount = df[item_col].map(df[item_col].value_counts())
        keep = (ucount >= k) & (icount >= k)
        if keep.all():
            return df
        df = df[keep]


def kcore_or_fail(inter: pd.DataFrame, k: int, source: str, user_col: str = "user",
                  item_col: str = "item") -> pd.DataFrame:
    """:func:`kcore_filter` for a loader (``k`` = ``data.min_interactions``; ``k <= 1`` keeps every row).

    Loaders call it on raw ids *before* they re-index and :meth:`RecDataset.validate` checks the
    per-user minimum, so ``data.min_interactions``, the fix that check advises, takes effect.

    Raises:
        DataError: nothing is left after the filter (naming ``source`` and the fix).
    """
    out = kcore_filter(inter, k, user_col, item_col)
    if out.empty and not inter.empty:
        raise DataError(f"{source}: nothing is left after a {k}-core filter (every user and item needs {k} "
                        "interactions); lower data.min_interactions")
    return out


def reindex(items: pd.DataFrame, users: pd.DataFrame, inter: pd.DataFrame, source: str) -> tuple:
    """Keep only items/users that occur in ``inter`` (raw ids) and re-number everything from 0.

    ``inter`` has columns ``user`` and ``item`` (raw ids as str), ``timestamp``, ``rating``.
    Returns ``(items, users, interactions)`` in canonical form.
    """
    unknown = ~inter["item"].isin(items["raw_id"])
    if unknown.any():
        r = inter[unknown].iloc[0]
        raise DataError(
            f"{source}: interaction of user {r['user']!r} names item {r['item']!r}, which is not in the item "
            f"table; every interaction must name a known item (fix the ids or add the item's metadata)"
        )
    used_items = items[items.raw_id.isin(set(inter["item"]))].drop(columns="item_id").reset_index(drop=True)
    used_items.insert(0, "item_id", np.arange(len(used_items), dtype=np.int64))
    used_users = users[users.raw_id.isin(set(inter["user"]))].drop(columns="user_id").reset_index(drop=True)
    used_users.insert(0, "user_id", np.arange(len(used_users), dtype=np.int64))
    imap = dict(zip(used_items.raw_id, used_items.item_id))
    umap = dict(zip(used_users.raw_id, used_users.user_id))
    missing_users = ~inter["user"].isin(umap.keys())
    if missing_users.any():
        raise DataError(f"{source}: user {inter[missing_users].iloc[0]['user']!r} is not in the user table")
    out = make_interactions(inter["user"].map(umap), inter["item"].map(imap), inter["timestamp"],
                            inter["rating"] if "rating" in inter else None, source)
    return used_items, used_users, out
