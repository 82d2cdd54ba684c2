"""Leave-one-out split (LC-Rec / LETTER / Align3GR protocol).

For a user whose chronological sequence is ``s[0..n-1]``:

* test sample:       history ``s[:n-1]``, target ``s[n-1]``
* validation sample: history ``s[:n-2]``, target ``s[n-2]``
* training samples:  for every ``t`` in ``1..n-3``: history ``s[:t]``, target ``s[t]``

Histories keep the ``max_history`` most recent items. The training *sequence* of a user is
``s[:n-2]``: everything a model may learn from (collaborative encoders train on it only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from align3gr_kit.data.schema import DataError, RecDataset
from align3gr_kit.utils import atomic_path, write_json


@dataclass
class Split:
    """Samples of the leave-one-out split.

    Attributes:
        train: one row per training sample: ``user_id``, ``history`` (list[int]), ``target``.
        valid: one row per user (second-to-last item).
        test: one row per user (last item).
        train_sequences: ``user_id -> np.ndarray`` of the user's training items ``s[:n-2]``
            (full length, not capped).
        max_history: the history cap used.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    train_sequences: dict[int, np.ndarray]
    max_history: int

    def samples(self, split: str) -> pd.DataFrame:
        """``train``, ``valid`` or ``test`` samples."""
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {split!r}")
        return getattr(self, split)

    def stats(self) -> dict:
        return {
            "train_samples": len(self.train),
            "valid_users": len(self.valid),
            "test_users": len(self.test),
            "avg_history_len": round(float(self.test.history.map(len).mean()), 4) if len(self.test) else 0.0,
        }

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        for name in ("train", "valid", "test"):
            with atomic_path(folder / f"{name}.parquet") as tmp:
                getattr(self, name).to_parquet(tmp, index=False)
        write_json(folder / "split.json", {"max_history": self.max_history})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Split":
        import json

        folder = Path(folder)
        parts = {}
        for name in ("train", "valid", "test"):
            df = pd.read_parquet(folder / f"{name}.parquet")
            df["history"] = df["history"].map(lambda h: [int(x) for x in h])
            parts[name] = df
        max_history = json.loads((folder / "split.json").read_text())["max_history"]
        # The training sequence of a user is its validation history plus nothing: s[:n-2] is the
        # uncapped version; rebuild it from the training samples (first history item + targets).
        seqs = _train_sequences_from_samples(parts["train"], parts["valid"])
        return cls(parts["train"], parts["valid"], parts["test"], seqs, max_history)


def _train_sequences_from_samples(train: pd.DataFrame, valid: pd.DataFrame) -> dict[int, np.ndarray]:
    seqs: dict[int, np.ndarray] = {}
    by_user = {u: g for u, g in train.groupby("user_id", sort=False)}
    for u, hist in zip(valid.user_id, valid.history):
        g = by_user.get(u)
        if g is None:  # a user with exactly 3 interactions has one training item and no sample
            seqs[int(u)] = np.asarray(hist[-1:], dtype=np.int64)
        else:
            seqs[int(u)] = np.asarray([g.history.iloc[0][0], *g.target.tolist()], dtype=np.int64)
    return seqs


def leave_one_out(ds: RecDataset, max_history: int = 20) -> Split:
    """Split ``ds`` chronologically per user; see the module docstring for the exact rule."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    rows_train: list[tuple[int, list[int], int]] = []
    rows_valid: list[tuple[int, list[int], int]] = []
    rows_test: list[tuple[int, list[int], int]] = []
    train_seqs: dict[int, np.ndarray] = {}
    for u, seq in sorted(ds.sequences().items()):
        n = len(seq)
        if n < 3:
            raise DataError(
                f"{ds.source or ds.name}: user {ds.users.raw_id.iloc[u]!r} has {n} interaction(s); "
                "leave-one-out needs at least 3 (train, valid, test): filter such users out"
            )
        s = seq.tolist()
        for t in range(1, n - 2):
            rows_train.append((u, s[max(0, t - max_history):t], s[t]))
        rows_valid.append((u, s[max(0, n - 2 - max_history):n - 2], s[n - 2]))
        rows_test.append((u, s[max(0, n - 1 - max_history):n - 1], s[n - 1]))
        train_seqs[u] = seq[: n - 2].astype(np.int64)

    def frame(rows):
        return pd.DataFrame(rows, columns=["user_id", "history", "target"]).astype({"user_id": "int64", "target": "int64"})

    return Split(frame(rows_train), frame(rows_valid), frame(rows_test), train_seqs, max_history)
