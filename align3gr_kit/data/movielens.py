"""MovieLens 100K (GroupLens): ratings, movie titles/genres and real user profiles.

Item text = title (with year), release date and genres; user profile = age, gender, occupation
and the US region of the zip code; ratings 1-5 kept (RF-DPO's disliked/neutral/liked levels).
Encodings: ``u.data`` is ASCII; ``u.item`` and ``u.user`` are latin-1, read as UTF-8 when a re-export
made them valid UTF-8 (the rule in :mod:`align3gr_kit.data.textio`).
The licence asks that the data not be redistributed: :func:`download` fetches the official archive.
"""

from __future__ import annotations

import hashlib
import io
import re
import urllib.request
import warnings
import zipfile
from pathlib import Path

import pandas as pd

from align3gr_kit.data.schema import (DataError, RecDataset, check_timestamp, drop_repeat_events, kcore_or_fail,
                                     make_items, make_users, reindex)
from align3gr_kit.data.textio import read_text
from align3gr_kit.errors import DataWarning, bad_input

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# sha256 of the files this loader reads, as published in the official archive.
SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
}
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]
# First digit of a US ZIP code -> the USPS national area it belongs to.
ZIP_REGIONS = {
    "0": "New England", "1": "New York and Pennsylvania", "2": "the Mid-Atlantic", "3": "the Southeast",
    "4": "the Great Lakes", "5": "the Upper Midwest", "6": "the Central Plains", "7": "the South Central states",
    "8": "the Mountain West", "9": "the Pacific West",
}
# An integer field (ids, rating, time); not int() alone, which also takes '1_000' and non-ASCII digits.
_INT = re.compile(r"\s*[+-]?[0-9]+\s*")


def region_of_zip(zipcode: str) -> str:
    """The US region of a ZIP code, or ``outside the US`` for non-numeric (e.g. Canadian) codes."""
    z = zipcode.strip()
    return ZIP_REGIONS[z[0]] if z[:5].isdigit() else "outside the US"


def _lines(path: Path, encoding: str) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: file missing; ml-100k needs u.data, u.item and u.user "
                        f"(download: python -m align3gr_kit data download ml-100k)")
    # latin-1 files (u.item, u.user) are read as UTF-8 when they are valid UTF-8 with non-ASCII bytes:
    # a UTF-8 re-export read as latin-1 would give mojibake titles (rule in data/textio.py).
    text, _ = read_text(path, encoding, utf8_if_valid=encoding == "latin-1")
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: the file is empty; it must hold one record per line "
                        "(use the original GroupLens file: python -m align3gr_kit data download ml-100k)")
    return lines


def _int(text: str, path: Path, n: int, field: str, what: str) -> int:
    """``text`` as an integer, or a :class:`DataError` naming the line and the field."""
    if not _INT.fullmatch(text):
        raise bad_input(path, f"line {n}", field, f"{text[:40]!r} is not an integer",
                        f"in ml-100k, {what} is a whole number: fix or delete the line")
    return int(text)


def load_ml100k(path: str | Path, min_interactions: int = 0) -> RecDataset:
    """Read ``u.data``, ``u.item`` (latin-1) and ``u.user`` from ``path`` into canonical form.

    ``min_interactions`` (``data.min_interactions``): an iterative k-core filter on users and items,
    applied before the per-user minimum is checked; 0 = none (ml-100k has 20+ ratings per user).

    A (user, item) pair rated more than once keeps its first rating (earliest time, then file order;
    :func:`~align3gr_kit.data.schema.drop_repeat_events` warns with the count); users of ``u.user``
    without ratings are left out with a :class:`~align3gr_kit.errors.DataWarning`.
    """
    path = Path(path)
    data_path = path / "u.data"
    inter_rows = []
    for n, line in enumerate(_lines(data_path, "ascii"), 1):
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{data_path}: line {n} has {len(parts)} tab-separated fields, expected 4 "
                            f"(user, item, rating, unix time): {line[:60]!r}")
        _int(parts[0], data_path, n, "user", "a user id")
        _int(parts[1], data_path, n, "item", "an item id")
        r = _int(parts[2], data_path, n, "rating", "a rating")
        if not 1 <= r <= 5:
            raise bad_input(data_path, f"line {n}", "rating", f"{r} is outside 1..5",
                            "ml-100k ratings are 1-5 stars: fix or delete the line")
        t = check_timestamp(_int(parts[3], data_path, n, "timestamp", "a unix time"), data_path, f"line {n}")
        inter_rows.append((parts[0], parts[1], t, float(r)))
    item_rows = []
    item_path = path / "u.item"
    for n, line in enumerate(_lines(item_path, "latin-1"), 1):
        f = line.split("|")
        if len(f) != 24:
            raise DataError(f"{item_path}: line {n} has {len(f)} '|'-separated fields, expected 24 "
                            "(id|title|release date|video date|url|19 genre flags)")
        _int(f[0], item_path, n, "id", "an item id")
        genres = [g for g, flag in zip(GENRES, f[5:]) if flag.strip() == "1" and g != "unknown"]
        if not f[1].strip():
            raise DataError(f"{item_path}: line {n} (item {f[0]}) has no title; every item needs a title")
        date = f[2].strip()
        desc = f"Released {date}. " if date else ""
        desc += f"Genres: {', '.join(genres)}." if genres else "Genre unknown."
        item_rows.append({"raw_id": f[0], "title": f[1].strip(), "description": desc, "categories": genres,
                          "brand": "", "category": genres[0] if genres else "unknown"})
    user_rows = []
    user_path = path / "u.user"
    for n, line in enumerate(_lines(user_path, "latin-1"), 1):
        f = line.split("|")
        if len(f) != 5:
            raise DataError(f"{user_path}: line {n} has {len(f)} '|'-separated fields, expected 5 "
                            "(id, age, gender, occupation, zip)")
        uid, age, gender, occupation, zipcode = f
        _int(uid, user_path, n, "id", "a user id")
        sex = {"M": "male", "F": "female"}.get(gender, "person")
        region = region_of_zip(zipcode)
        profile = f"A {age}-year-old {sex} {occupation} living in {region}."
        user_rows.append({"raw_id": uid, "profile": profile,
                          "attributes": {"age": age, "gender": gender, "occupation": occupation,
                                         "zip": zipcode, "region": region}})
    inter = pd.DataFrame(inter_rows, columns=["user", "item", "timestamp", "rating"])
    inter, repeats = drop_repeat_events(inter, str(data_path))
    rated = set(inter["user"])
    unrated = [row["raw_id"] for row in user_rows if row["raw_id"] not in rated]
    if unrated:  # an item without ratings is an ordinary catalogue entry; a user without any is worth a word
        warnings.warn(DataWarning(f"{user_path}: {len(unrated)} user(s) have no rating in u.data and are left "
                                  f"out (e.g. user {unrated[0]!r})"), stacklevel=2)
    inter = kcore_or_fail(inter, min_interactions, str(data_path))
    items, users, interactions = reindex(make_items(item_rows, str(item_path)),
                                         make_users(user_rows, str(user_path)), inter, str(data_path))
    extra = {"repeat_events_dropped": repeats} if repeats else {}
    return RecDataset("ml-100k", items, users, interactions, source=str(path), extra=extra).validate()


def download(dest: str | Path) -> Path:
    """Fetch the official ml-100k archive into ``dest`` and verify the files' checksums."""
    dest = Path(dest)
    with urllib.request.urlopen(URL, timeout=60) as resp:  # noqa: S310 (fixed https URL)
        blob = resp.read()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        dest.mkdir(parents=True, exist_ok=True)
        for name in zf.namelist():
            base = Path(name).name
            if name.startswith("ml-100k/") and base and not name.endswith("/"):
                (dest / base).write_bytes(zf.read(name))
    for name, digest in SHA256.items():
        got = hashlib.sha256((dest / name).read_bytes()).hexdigest()
        if got != digest:
            raise DataError(f"{dest / name}: checksum {got} does not match the official {digest}; "
                            "the download is corrupt or not ml-100k: delete the folder and try again")
    return dest
