"""MovieLens 100K (GroupLens): ratings, movie titles/genres and real user profiles.

Item text = title (with year), release date and genres; user profile = age, gender, occupation
and the US region of the zip code; ratings 1-5 kept (RF-DPO's disliked/neutral/liked levels).
The licence asks that the data not be redistributed: :func:`download` fetches the official archive.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from align3gr_kit.data.schema import DataError, RecDataset, make_items, make_users, reindex

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


def region_of_zip(zipcode: str) -> str:
    """The US region of a ZIP code, or ``outside the US`` for non-numeric (e.g. Canadian) codes."""
    z = zipcode.strip()
    return ZIP_REGIONS[z[0]] if z[:5].isdigit() else "outside the US"


def _lines(path: Path, encoding: str) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: file missing; ml-100k needs u.data, u.item and u.user "
                        f"(download: python -m align3gr_kit data download ml-100k)")
    try:
        return path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not readable as {encoding} at byte {e.start}; "
                        f"use the original GroupLens file (u.item is latin-1)") from e


def load_ml100k(path: str | Path) -> RecDataset:
    """Read ``u.data``, ``u.item`` (latin-1) and ``u.user`` from ``path`` into canonical form."""
    path = Path(path)
    inter_rows = []
    for n, line in enumerate(_lines(path / "u.data", "ascii"), 1):
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{path / 'u.data'}: line {n} has {len(parts)} tab-separated fields, expected 4 "
                            f"(user, item, rating, unix time): {line[:60]!r}")
        try:
            u, i, r, t = parts[0], parts[1], int(parts[2]), int(parts[3])
        except ValueError as e:
            raise DataError(f"{path / 'u.data'}: line {n}: rating and time must be integers ({e})") from e
        inter_rows.append((u, i, t, float(r)))
    item_rows = []
    for n, line in enumerate(_lines(path / "u.item", "latin-1"), 1):
        f = line.split("|")
        if len(f) != 24:
            raise DataError(f"{path / 'u.item'}: line {n} has {len(f)} '|'-separated fields, expected 24")
        genres = [g for g, flag in zip(GENRES, f[5:]) if flag.strip() == "1" and g != "unknown"]
        if not f[1].strip():
            raise DataError(f"{path / 'u.item'}: line {n} (item {f[0]}) has no title; every item needs a title")
        date = f[2].strip()
        desc = f"Released {date}. " if date else ""
        desc += f"Genres: {', '.join(genres)}." if genres else "Genre unknown."
        item_rows.append({"raw_id": f[0], "title": f[1].strip(), "description": desc, "categories": genres,
                          "brand": "", "category": genres[0] if genres else "unknown"})
    user_rows = []
    for n, line in enumerate(_lines(path / "u.user", "latin-1"), 1):
        f = line.split("|")
        if len(f) != 5:
            raise DataError(f"{path / 'u.user'}: line {n} has {len(f)} '|'-separated fields, expected 5 "
                            "(id, age, gender, occupation, zip)")
        uid, age, gender, occupation, zipcode = f
        sex = {"M": "male", "F": "female"}.get(gender, "person")
        region = region_of_zip(zipcode)
        profile = f"A {age}-year-old {sex} {occupation} living in {region}."
        user_rows.append({"raw_id": uid, "profile": profile,
                          "attributes": {"age": age, "gender": gender, "occupation": occupation,
                                         "zip": zipcode, "region": region}})
    inter = pd.DataFrame(inter_rows, columns=["user", "item", "timestamp", "rating"])
    items, users, interactions = reindex(make_items(item_rows, str(path / "u.item")),
                                         make_users(user_rows, str(path / "u.user")), inter, str(path / "u.data"))
    return RecDataset("ml-100k", items, users, interactions, source=str(path)).validate()


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
