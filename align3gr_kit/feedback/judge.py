"""A judge of what users like that shares neither ratings nor model with RF-DPO's training oracle.

On real data (ml-100k...) the ratings are cross-fitted: each user's TRAINING ratings (the leave-one-out
training part, :func:`~align3gr_kit.feedback.simulator.split_ratings`) are split in two halves by a
seeded draw (:func:`cross_fit`). The training oracle (``dpo.rf_oracle``: the SVD simulator or the
logged ratings) sees the ``oracle`` half only; the judge sees the ``judge`` half plus the held-out
(validation and test) ratings, which training never sees anyway. No rating reaches both: the two
sets of interaction rows are disjoint by construction (and asserted where they are built).

The judge is another model family than the training simulator's biased matrix factorisation: an
item-based k-nearest-neighbour model with baseline estimates (Koren 2010, "Factor in the neighbors",
eq. 3; ``surprise.KNNBaseline`` with ``pearson_baseline`` item similarities). It is deterministic
(baselines by ALS, no random draw); its seed, ``seed + JUDGE_SEED_OFFSET``, is recorded so that the
judge's own randomness, should a model with any be put in its place, never shares the oracle's.

On the kit's generated data the judge is the generator itself
(:class:`~align3gr_kit.feedback.ground_truth.GroundTruthOracle`), which sees no rating at all, and
the training oracle is a noisy, fitted view of it (the simulator fit on the generated training
ratings): no cross-fit is needed there.

Imports of the kit: ``data.schema`` and this package's ``oracle`` / ``simulator``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd

from align3gr_kit.data.schema import DataError, RecDataset
from align3gr_kit.feedback.oracle import RATED_LOADERS
from align3gr_kit.feedback.simulator import PredictedRatingOracle

#: The judge's seed is the run seed plus this (its own seed, never the training oracle's).
JUDGE_SEED_OFFSET = 1009
#: ``surprise.KNNBaseline`` settings of the judge: item-based, shrunk Pearson-baseline similarity.
JUDGE_PARAMS = {"k": 40, "min_k": 1, "sim_options": {"name": "pearson_baseline", "user_based": False},
                "bsl_options": {"method": "als", "n_epochs": 10}}


def rows_digest(rows: Sequence[int]) -> str:
    """16 hex digits of the SHA-256 of sorted interaction row ids (what a model was fit on)."""
    return hashlib.sha256(np.sort(np.asarray(rows, dtype=np.int64)).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class CrossFit:
    """Which rated interactions (row positions in ``dataset.interactions``) each side may see.

    Attributes:
        oracle_rows: the training oracle's half of each user's training ratings.
        judge_rows: the other half, plus every held-out (validation/test) rating.
        seed: the draw's seed (the run seed).
    """

    oracle_rows: np.ndarray
    judge_rows: np.ndarray
    seed: int

    def view(self, dataset: RecDataset, side: str) -> RecDataset:
        """``dataset`` with every rating outside ``side``'s rows (``oracle`` or ``judge``) set to NaN;
        the interactions themselves (and so the chronology and the split) are unchanged."""
        rows = {"oracle": self.oracle_rows, "judge": self.judge_rows}[side]
        inter = dataset.interactions.copy()
        keep = np.zeros(len(inter), dtype=bool)
        keep[rows] = True
        inter["rating"] = np.where(keep, inter["rating"].to_numpy(dtype=np.float64), np.nan)
        return replace(dataset, interactions=inter)


def cross_fit(dataset: RecDataset, seed: int = 0, holdout: int = 2) -> CrossFit:
    """Split each user's training ratings in two halves by a draw fixed by ``seed`` (odd counts: the
    oracle gets the extra one); the held-out ratings (the last ``holdout`` of each user) go to the judge.

    Raises:
        DataError: the dataset has no ratings.
    """
    if not dataset.has_ratings:
        raise DataError(f"{dataset.source or dataset.name}: dataset {dataset.name!r} has no ratings to cross-fit a "
                        f"judge on; use a loader that carries ratings ({', '.join(RATED_LOADERS)})")
    inter = dataset.interactions
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user_id"].to_numpy()))
    users = inter["user_id"].to_numpy()[order]
    from_end = pd.Series(users).groupby(users, sort=False).cumcount(ascending=False).to_numpy()
    rated = ~np.isnan(inter["rating"].to_numpy(dtype=np.float64)[order])
    train = rated & (from_end >= holdout)
    rng = np.random.default_rng([int(seed), 0xC105])
    # a random key per row, ranked within the user: the first ceil(n/2) of each user go to the oracle
    key = rng.random(len(order))
    frame = pd.DataFrame({"u": users[train], "key": key[train]})
    rank = frame.groupby("u")["key"].rank(method="first").to_numpy()
    size = frame.groupby("u")["key"].transform("size").to_numpy()
    to_oracle = rank <= np.ceil(size / 2)
    train_rows = order[train]
    oracle_rows = np.sort(train_rows[to_oracle])
    judge_rows = np.sort(np.concatenate([train_rows[~to_oracle], order[rated & (from_end < holdout)]]))
    if np.intersect1d(oracle_rows, judge_rows).size:  # by construction never; a guard for edits to the above
        raise AssertionError("cross_fit: a rating reached both the training oracle and the judge")
    return CrossFit(oracle_rows, judge_rows, int(seed))


def has_generator(dataset: RecDataset) -> bool:
    """Whether ``dataset`` is the kit's generated data (its generator's ground truth is the judge)."""
    return dataset.name == "synthetic" and bool(dataset.extra.get("generator"))


class NeighbourJudge(PredictedRatingOracle):
    """Levels from an item-kNN rating model (``surprise.KNNBaseline``) fit on the judge's ratings.

    Build with :meth:`fit`. Grades any (user, item) pair of the dataset by its predicted rating, rounded
    to the nearest star (:func:`~align3gr_kit.feedback.simulator.levels_of`); unknown users/items get
    Surprise's baseline fallback. ``meta``: what it was fit on (``n_ratings``, ``rows_sha256``, ``seed``,
    ``params``, ``model``).
    """

    def __init__(self, algo, meta: dict):
        self._algo = algo
        self.meta = dict(meta)

    @classmethod
    def fit(cls, dataset: RecDataset, seed: int = 0, holdout: int = 2) -> "NeighbourJudge":
        """Fit on :func:`cross_fit`'s ``judge`` rows of ``dataset`` (``seed``: the run seed; the judge's
        own seed is ``seed + JUDGE_SEED_OFFSET``)."""
        from surprise import Dataset, KNNBaseline, Reader

        split = cross_fit(dataset, seed, holdout)
        rows = split.judge_rows
        frame = dataset.interactions.iloc[rows][["user_id", "item_id", "rating"]]
        trainset = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5))).build_full_trainset()
        algo = KNNBaseline(verbose=False, **JUDGE_PARAMS)
        np.random.seed(seed + JUDGE_SEED_OFFSET)  # Surprise draws from numpy's global generator, if at all
        algo.fit(trainset)
        meta = {"model": "surprise.KNNBaseline (item-kNN, pearson_baseline)", "fit_on": "judge half + held-out",
                "n_ratings": int(len(rows)), "rows_sha256": rows_digest(rows), "seed": int(seed + JUDGE_SEED_OFFSET),
                "params": JUDGE_PARAMS, "dataset": dataset.name}
        return cls(algo, meta)

    def ratings(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> np.ndarray:
        """Predicted ratings ``[n]`` in ``[1, 5]`` of aligned pairs."""
        est = self._algo.predict
        return np.array([est(int(u), int(i), clip=True).est for u, i in zip(user_ids, item_ids)], dtype=np.float64)
