"""Real user feedback for RF-DPO: who liked, tolerated or disliked what.

:class:`FeedbackOracle` is the interface a feedback source implements (ratings, an LLM judge, a
simulator, logged clicks...). :class:`RatingsOracle` reads explicit 1-5 ratings:
``1 -> disliked``, ``2-3 -> neutral``, ``4-5 -> liked`` (for fractional ratings: below 2 disliked,
below 4 neutral, else liked).

Leakage rule: the oracle only knows the ratings of the TRAINING part of each user's sequence
(everything but the last ``holdout`` interactions, i.e. ``s[:n-2]`` of the leave-one-out split). A
validation or test item is never judged, even when the policy recommends it, so preference data can
not carry the held-out targets' ratings into training.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from align3gr_kit.data.schema import DataError, RecDataset

LEVELS = ("disliked", "neutral", "liked")
#: Loaders whose datasets carry ratings (RF-DPO needs them); ``lcrec`` has none.
RATED_LOADERS = ("synthetic", "ml-100k", "amazon2018")


def rating_level(rating: float) -> str | None:
    """Feedback level of one rating: ``1 -> disliked``, ``2-3 -> neutral``, ``4-5 -> liked``; NaN -> None."""
    if rating is None or (isinstance(rating, float) and math.isnan(rating)):
        return None
    if rating < 2:
        return "disliked"
    if rating < 4:
        return "neutral"
    return "liked"


class FeedbackOracle(ABC):
    """A source of user feedback on recommended items."""

    @abstractmethod
    def level(self, user_id: int, item_id: int) -> str | None:
        """``disliked``, ``neutral`` or ``liked``; None when the oracle cannot judge this pair."""

    def levels(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> list[str | None]:
        """Batched :meth:`level` over aligned ``user_ids`` / ``item_ids``."""
        if len(user_ids) != len(item_ids):
            raise ValueError(f"levels(): {len(user_ids)} users for {len(item_ids)} items; pass aligned sequences")
        return [self.level(int(u), int(i)) for u, i in zip(user_ids, item_ids)]

    def ratings(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> np.ndarray:
        """The 1-5 rating the oracle expects for each aligned pair, ``[n]`` float, NaN where it has none
        (default: none; oracles that model ratings override it)."""
        return np.full(len(item_ids), np.nan)


class RatingsOracle(FeedbackOracle):
    """Feedback from a dataset's explicit ratings, restricted to each user's training interactions.

    Args:
        dataset: a :class:`RecDataset` with ratings (``interactions.rating`` not all NaN).
        holdout: interactions at the end of each chronological sequence never revealed (2 =
            validation + test of the leave-one-out split).
    Raises:
        DataError: the dataset has no ratings (names the loaders that carry them).
    """

    def __init__(self, dataset: RecDataset, holdout: int = 2):
        if not dataset.has_ratings:
            raise DataError(
                f"{dataset.source or dataset.name}: dataset {dataset.name!r} has no ratings, so RF-DPO has no real "
                f"feedback; use a loader that carries ratings ({', '.join(RATED_LOADERS)}; lcrec has none) or skip "
                "RF-DPO (dpo.rf_stages: [])"
            )
        inter = dataset.interactions
        # Same chronological order as RecDataset.sequences() and therefore as leave_one_out.
        order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user_id"].to_numpy()))
        users = inter["user_id"].to_numpy()[order]
        items = inter["item_id"].to_numpy()[order]
        ratings = inter["rating"].to_numpy(dtype=np.float64)[order]
        self._ratings: dict[tuple[int, int], float] = {}
        self._train_items: dict[int, list[int]] = {}
        bounds = np.flatnonzero(np.diff(users)) + 1
        for seg_u, seg_i, seg_r in zip(np.split(users, bounds), np.split(items, bounds), np.split(ratings, bounds)):
            if len(seg_u) == 0:
                continue
            keep = max(len(seg_u) - holdout, 0)
            u = int(seg_u[0])
            self._train_items[u] = [int(i) for i in seg_i[:keep]]
            for i, r in zip(seg_i[:keep], seg_r[:keep]):
                if not math.isnan(r):
                    self._ratings[(u, int(i))] = float(r)  # a later training rating of the same item wins

    def rating(self, user_id: int, item_id: int) -> float | None:
        """The training rating of the pair, None if unknown or held out."""
        return self._ratings.get((int(user_id), int(item_id)))

    def level(self, user_id: int, item_id: int) -> str | None:
        r = self.rating(user_id, item_id)
        return None if r is None else rating_level(r)

    def levels(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> list[str | None]:
        if len(user_ids) != len(item_ids):
            raise ValueError(f"levels(): {len(user_ids)} users for {len(item_ids)} items; pass aligned sequences")
        get = self._ratings.get
        out = []
        for u, i in zip(user_ids, item_ids):
            r = get((int(u), int(i)))
            out.append(None if r is None else rating_level(r))
        return out

    def ratings(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> np.ndarray:
        get = self._ratings.get
        return np.array([get((int(u), int(i)), np.nan) for u, i in zip(user_ids, item_ids)], dtype=np.float64)

    def train_items(self, user_id: int) -> list[int]:
        """The user's training interactions in chronological order (what the oracle may reveal)."""
        return list(self._train_items.get(int(user_id), []))
