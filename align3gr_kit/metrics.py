"""Recall@K and NDCG@K with one relevant item per user (full ranking, leave-one-out).

With one relevant item at 0-based rank ``r`` in the ranked list:
``Recall@K = 1[r < K]`` and ``NDCG@K = 1[r < K] / log2(r + 2)`` (the ideal DCG is 1).
Every evaluated user counts; a user whose target is absent from the list scores 0.
Every evaluation command of the kit reports these keys: ``recall@5``, ``recall@10``, ``ndcg@5``, ``ndcg@10``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def target_ranks(ranked: np.ndarray | Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """0-based rank of each user's target in their ranked list; ``-1`` when absent.

    Args:
        ranked: ``[n_users, L]`` item ids, best first (rows may be padded with -1).
        targets: ``[n_users]`` the held-out item of each user.
    Returns:
        ``[n_users]`` int array.
    """
    ranked = np.asarray(ranked)
    targets = np.asarray(targets).reshape(-1, 1)
    if ranked.ndim != 2 or len(ranked) != len(targets):
        raise ValueError(f"ranked must be [n_users, L] with n_users={len(targets)}, got shape {ranked.shape}")
    hit = ranked == targets
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """Recall@K and NDCG@K averaged over all users from 0-based target ranks (-1 = miss)."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("no users to evaluate")
    found = ranks >= 0
    out: dict[str, float] = {}
    for k in ks:
        hit = found & (ranks < k)
        out[f"recall@{k}"] = float(hit.mean())
    for k in ks:
        hit = found & (ranks < k)
        gains = np.zeros(len(ranks))
        gains[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
        out[f"ndcg@{k}"] = float(gains.mean())
    return out


def rank_metrics(ranked, targets, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """Recall@K / NDCG@K of ranked lists against one target per user."""
    return metrics_from_ranks(target_ranks(ranked, targets), ks)


def topk_from_scores(scores: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Top-``k`` item ids per row of a ``[n_users, n_items]`` score matrix (ties: lower id first).

    ``exclude`` lists item ids per user to drop (e.g. already-seen items); the protocol of the
    paper ranks over all items, so callers pass ``None`` unless they say otherwise.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if exclude is not None:
        for row, items in enumerate(exclude):
            if len(items):
                scores[row, list(items)] = -np.inf
    k = min(k, scores.shape[1])
    # argsort on (-score, id) for deterministic tie-breaking.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def prefix_hits(ranked: np.ndarray | Sequence[Sequence[int]], targets: Sequence[int], codes: np.ndarray,
                k: int = 10) -> np.ndarray:
    """Where a generative recommender loses recall: per SCID level, the share of users for whom at least
    one of the top-``k`` items shares the target's first ``l`` codes.

    Args:
        ranked: ``[n_users, >=k]`` item ids, best first (-1 pads a short list and never matches).
        targets: ``[n_users]`` the held-out item of each user.
        codes: ``[n_items, L]`` the items' SCID codes.
    Returns:
        ``[L]`` shares for ``l = 1..L``, non-increasing; with unique SCIDs the last one is Recall@k.
    """
    ranked = np.asarray(ranked)[:, :k]
    codes = np.asarray(codes)
    targets = np.asarray(targets, dtype=np.int64)
    if ranked.ndim != 2 or len(ranked) != len(targets):
        raise ValueError(f"ranked must be [n_users, k] with n_users={len(targets)}, got shape {ranked.shape}")
    valid = ranked >= 0
    rec = codes[np.where(valid, ranked, 0)]                       # [U, k, L]
    same = (rec == codes[targets][:, None, :]) & valid[..., None]
    prefix = np.cumprod(same, axis=2).astype(bool)                # shares levels 1..l
    return prefix.any(axis=1).mean(axis=0)


def chance_prefix_hits(targets: Sequence[int], codes: np.ndarray, k: int = 10) -> np.ndarray:
    """:func:`prefix_hits` of ``k`` distinct items drawn uniformly at random from the catalogue, exact
    (no sampling): a target whose first ``l`` codes are shared by ``g`` of the ``n`` items is missed
    with probability ``C(n - g, k) / C(n, k) = prod_{j<k} (n - g - j) / (n - j)``.

    Returns:
        ``[L]`` expected shares for ``l = 1..L``.
    """
    codes = np.asarray(codes)
    n, levels = codes.shape
    targets = np.asarray(targets, dtype=np.int64)
    out = np.zeros(levels)
    for level in range(levels):
        _, group, size = np.unique(codes[:, : level + 1], axis=0, return_inverse=True, return_counts=True)
        g = size[group.reshape(-1)[targets]].astype(np.float64)   # items sharing the target's prefix
        j = np.arange(min(k, n))
        miss = np.prod(np.clip((n - g[:, None] - j) / (n - j), 0.0, None), axis=1)
        out[level] = float((1.0 - miss).mean())
    return out


def paired_bootstrap(values_a: Sequence[float], values_b: Sequence[float], n_boot: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of the per-user difference ``b - a`` and its paired-bootstrap 95% interval (users resampled
    with replacement, both models' values together): ``(delta, low, high)``."""
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired: per-user values must be two [n_users] arrays of one length, got {a.shape} "
                         f"and {b.shape}")
    diff = b - a
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))
    low, high = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def paired_hit_difference(hits_a: Sequence[bool], hits_b: Sequence[bool], n_boot: int = 10_000,
                          seed: int = 0) -> dict[str, float]:
    """Is B's Recall@K different from A's on the same users beyond user-sampling noise?

    With one seed, two models evaluated on the same users differ by the users each one hits; the
    difference ``Recall_B - Recall_A`` is judged on the discordant users only: ``only_a`` hit by A
    alone, ``only_b`` by B alone. McNemar's exact test (a two-sided binomial test of ``only_b`` out of
    ``only_a + only_b`` at 1/2, :func:`scipy.stats.binomtest`) gives ``p``; a paired bootstrap over
    users (:func:`paired_bootstrap`) gives the 95% interval of the difference.

    Args:
        hits_a, hits_b: ``[n_users]`` whether each user's target is in model A's / B's top K.
        n_boot: bootstrap resamples; seed: their generator's seed.
    Returns:
        ``{"users", "recall_a", "recall_b", "delta", "ci_low", "ci_high", "only_a", "only_b", "p"}``.
    """
    from scipy.stats import binomtest

    a = np.asarray(hits_a, dtype=bool)
    b = np.asarray(hits_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_hit_difference: hits must be two [n_users] arrays of one length, got {a.shape} "
                         f"and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    delta, low, high = paired_bootstrap(a, b, n_boot, seed)
    return {"users": int(len(a)), "recall_a": float(a.mean()), "recall_b": float(b.mean()), "delta": delta,
            "ci_low": low, "ci_high": high, "only_a": only_a, "only_b": only_b, "p": float(p)}


def per_user_metric(ranks: Sequence[int], metric: str) -> np.ndarray:
    """Each user's ``recall@K`` (0/1) or ``ndcg@K`` from 0-based target ranks (-1 = miss), the values
    :func:`metrics_from_ranks` averages."""
    r = np.asarray(ranks)
    name, k = metric.split("@")
    hit = (r >= 0) & (r < int(k))
    if name == "recall":
        return hit.astype(np.float64)
    if name == "ndcg":
        out = np.zeros(len(r))
        out[hit] = 1.0 / np.log2(r[hit] + 2.0)
        return out
    raise ValueError(f"per_user_metric: {metric!r} is not recall@K or ndcg@K")
