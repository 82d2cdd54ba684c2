"""Collision resolution and codebook statistics.

Rule (TIGER-style, deterministic): after the RQ-VAE's ``L`` levels, every row gets one extra level
whose code is the row's index among the rows sharing its ``L``-level prefix, rows taken in id order.
Rows with a prefix of their own get ``0``. So item 7 and item 3 with identical codes ``(4, 1, 9)``
become ``(4, 1, 9, 0)`` (item 3) and ``(4, 1, 9, 1)`` (item 7).

Why this rule rather than moving a colliding row to the nearest free code of the last level:
it can never fail (a prefix may have more colliding rows than free codes), it never changes the
learned codes (colliding rows keep every semantic level they earned), it depends only on the codes
and ids (no distances, no tie-breaking subtleties), and every row keeps the same length (``L + 1``)
whatever the data, so the decoding trie stays fixed-depth and the SCID length is known from the
config alone. The price is one extra token per SCID, mostly ``0``.
"""

from __future__ import annotations

import numpy as np


def append_unique_level(codes: np.ndarray) -> np.ndarray:
    """Make every row unique by appending the within-prefix index (see the module docstring).

    Args:
        codes: ``[n, L]`` int codes.
    Returns:
        ``[n, L + 1]`` int64 codes; all rows distinct.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [n, levels], got shape {codes.shape}")
    n = len(codes)
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int64)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(n), group))  # by group, then by row id
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    extra = np.empty(n, dtype=np.int64)
    extra[order] = np.arange(n) - first
    return np.concatenate([codes, extra[:, None]], axis=1)


def collisions(codes: np.ndarray) -> int:
    """Rows whose code tuple already occurred in an earlier row (``n - n_unique``)."""
    codes = np.asarray(codes)
    return int(len(codes) - len(np.unique(codes, axis=0))) if len(codes) else 0


def utilisation(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Per level, the fraction of the ``codebook_size`` codes used by at least one row."""
    codes = np.asarray(codes)
    return [float(len(np.unique(codes[:, lv])) / codebook_size) for lv in range(codes.shape[1])]


def perplexity(codes: np.ndarray) -> list[float]:
    """Per level, ``exp(entropy)`` of the code distribution (= number of equally used codes)."""
    codes = np.asarray(codes)
    out = []
    for lv in range(codes.shape[1]):
        p = np.bincount(codes[:, lv]) / len(codes)
        p = p[p > 0]
        out.append(float(np.exp(-(p * np.log(p)).sum())))
    return out
