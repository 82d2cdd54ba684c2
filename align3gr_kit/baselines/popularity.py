"""Most-popular baseline: every user gets the same ranking, items by training-sequence count.

Counts come from ``Split.train_sequences`` only (validation and test items are never counted);
ties go to the lower item id, like :func:`align3gr_kit.metrics.topk_from_scores`.
"""

from __future__ import annotations

import time

import numpy as np

from align3gr_kit.config import RunConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.metrics import metrics_from_ranks


def popularity_counts(split: Split, n_items: int) -> np.ndarray:
    """``[n_items]`` how often each item occurs in the training sequences."""
    seqs = [np.asarray(s, dtype=np.int64) for s in split.train_sequences.values()]
    return np.bincount(np.concatenate(seqs), minlength=n_items) if seqs else np.zeros(n_items, dtype=np.int64)


def popularity_ranks(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in the global popularity order (count desc, then id asc)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    rank_of = np.empty(len(counts), dtype=np.int64)
    rank_of[order] = np.arange(len(counts))
    return rank_of[np.asarray(targets, dtype=np.int64)]


def run_popularity_baseline(cfg: RunConfig, dataset: RecDataset, split: Split) -> dict:
    """Evaluate the most-popular ranking on validation and test (full ranking).

    Returns:
        ``{"valid": metrics, "test": metrics, "seconds": float}``.
    """
    t0 = time.time()
    counts = popularity_counts(split, dataset.n_items)
    out = {which: metrics_from_ranks(popularity_ranks(counts, split.samples(which).target.to_numpy()))
           for which in ("valid", "test")}
    out["seconds"] = round(time.time() - t0, 4)
    return out
