"""Semantic-Collaborative IDs (SCIDs) as tokens.

An SCID is a fixed-length tuple of codes, one per level. Items and users use distinct token
prefixes so their vocabularies never overlap: item level 0..3 are ``a b c d`` (``<a_12><b_3><c_40>``),
user levels are ``ua ub uc ud`` (``<ua_7><ub_1><uc_9>``). Every row of a table has the same number
of levels, which keeps the decoding trie and the beam search fixed-depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from align3gr_kit.utils import read_json, write_json

LEVEL_LETTERS = "abcdefgh"
_TOKEN_RE = re.compile(r"<(u?)([a-h])_(\d+)>")


@dataclass
class ScidTable:
    """SCIDs of all items (or all users).

    Attributes:
        codes: ``[n, L]`` int array; row ``i`` is the SCID of item/user ``i``.
        kind: ``item`` or ``user`` (decides the token prefix).
    """

    codes: np.ndarray
    kind: str = "item"

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2:
            raise ValueError(f"codes must be [n, levels], got shape {self.codes.shape}")
        if self.kind not in ("item", "user"):
            raise ValueError(f"kind must be 'item' or 'user', got {self.kind!r}")
        if self.codes.shape[1] > len(LEVEL_LETTERS):
            raise ValueError(f"at most {len(LEVEL_LETTERS)} levels are supported")

    @property
    def prefix(self) -> str:
        return "u" if self.kind == "user" else ""

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def level_token(self, level: int, code: int) -> str:
        return f"<{self.prefix}{LEVEL_LETTERS[level]}_{int(code)}>"

    def tokens(self, i: int) -> list[str]:
        """The token strings of row ``i``, one per level."""
        return [self.level_token(lv, c) for lv, c in enumerate(self.codes[i])]

    def string(self, i: int) -> str:
        """Row ``i`` as one string, e.g. ``<a_12><b_3><c_40>``."""
        return "".join(self.tokens(i))

    def vocabulary(self) -> list[str]:
        """Every token any row uses, level by level, codes ascending (deterministic order)."""
        out = []
        for lv in range(self.levels):
            out.extend(self.level_token(lv, c) for c in np.unique(self.codes[:, lv]))
        return out

    def n_unique(self) -> int:
        return len(np.unique(self.codes, axis=0)) if self.n else 0

    def collisions(self) -> int:
        """Rows that share their SCID with an earlier row."""
        return self.n - self.n_unique()

    def lookup(self) -> dict[tuple[int, ...], int]:
        """SCID tuple -> row index (requires unique SCIDs)."""
        if self.collisions():
            raise ValueError(f"{self.collisions()} {self.kind} SCIDs collide; resolve collisions first")
        return {tuple(int(x) for x in row): i for i, row in enumerate(self.codes)}

    def parse(self, text: str) -> tuple[int, ...]:
        """Codes of the first ``levels`` tokens of this table's kind found in ``text``."""
        codes = []
        for m in _TOKEN_RE.finditer(text):
            if (m.group(1) == "u") == (self.kind == "user"):
                codes.append(int(m.group(3)))
        return tuple(codes[: self.levels])

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"kind": self.kind, "levels": self.levels, "codes": self.codes.tolist()})

    @classmethod
    def load(cls, path: str | Path) -> "ScidTable":
        d = read_json(path)
        return cls(np.asarray(d["codes"], dtype=np.int64).reshape(-1, d["levels"]), d["kind"])


ITEM_SCIDS = "item_scids.json"
USER_SCIDS = "user_scids.json"


def save_scid_tables(folder: str | Path, items: ScidTable, users: ScidTable | None) -> None:
    """Write the item table (and the user table, when there is one) into ``folder``; the one place
    that names their files (the tokenizer's outputs and every saved model carry them)."""
    folder = Path(folder)
    items.save(folder / ITEM_SCIDS)
    if users is not None:
        users.save(folder / USER_SCIDS)


def load_scid_tables(folder: str | Path) -> tuple[ScidTable, ScidTable | None]:
    """``(items, users | None)`` written by :func:`save_scid_tables`."""
    folder = Path(folder)
    if not (folder / ITEM_SCIDS).exists():
        raise FileNotFoundError(f"{folder / ITEM_SCIDS}: no item SCID table; run the tokenize stage (01_tokenize)")
    users = ScidTable.load(folder / USER_SCIDS) if (folder / USER_SCIDS).exists() else None
    return ScidTable.load(folder / ITEM_SCIDS), users
