"""The user-item alignment loss (Align3GR eq. 1) and the held-out AUC that schedules the phases.

Hand-written because they are the method's own parts: no library ships Align3GR's L_U2I.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[A, B]`` between the rows of ``a [A, d]`` and ``b [B, d]``."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def u2i_loss(user_sc: torch.Tensor, item_sc: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Sampled softmax over in-batch negatives (paper eq. 1), averaged over the batch.

    ``L = -1/B sum_b log( exp(sim(u_b, i_b)/tau) / sum_j exp(sim(u_b, i_j)/tau) )`` with cosine ``sim``:
    row ``b`` pairs user ``b`` with its positive item ``b``; the other items of the batch are its
    negatives.

    Args:
        user_sc: ``[B, d]`` SC embeddings of the batch's users.
        item_sc: ``[B, d]`` SC embeddings of their positive items (same order).
        temperature: ``tau``.
    Returns:
        Scalar tensor.
    """
    if user_sc.shape != item_sc.shape:
        raise ValueError(f"user_sc {tuple(user_sc.shape)} and item_sc {tuple(item_sc.shape)} must have equal shapes")
    logits = cosine_matrix(user_sc, item_sc) / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def heldout_negatives(users: np.ndarray, positives: np.ndarray, n_items: int, n_neg: int = 20,
                      seed: int = 0) -> np.ndarray:
    """Random negative items for each held-out pair, never the pair's positive.

    Drawn once per training so the AUC of different epochs compares the same pairs.

    Returns:
        ``[len(users), n_neg]`` int array.
    """
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, n_items - 1, size=(len(users), n_neg))
    # Shift draws at or above the positive by one: uniform over the other n_items - 1 items.
    return neg + (neg >= np.asarray(positives)[:, None])


def u2i_auc(user_sc: torch.Tensor, item_sc: torch.Tensor, users: np.ndarray, positives: np.ndarray,
            negatives: np.ndarray) -> float:
    """User-averaged AUC of held-out positives against sampled negatives (ties count one half).

    Args:
        user_sc: ``[n_users, d]`` SC embeddings of all users.
        item_sc: ``[n_items, d]`` SC embeddings of all items.
        users: ``[P]`` user ids of the held-out pairs (one pair per user: its validation target).
        positives: ``[P]`` their held-out items.
        negatives: ``[P, N]`` negative items (see :func:`heldout_negatives`).
    Returns:
        AUC in ``[0, 1]``: the mean over pairs of the fraction of negatives scored below the positive.
    """
    with torch.no_grad():
        u = F.normalize(user_sc[torch.as_tensor(np.array(users, dtype=np.int64))], dim=-1)
        pos = (u * F.normalize(item_sc[torch.as_tensor(np.array(positives, dtype=np.int64))], dim=-1)).sum(-1, keepdim=True)
        neg = torch.einsum("pd,pnd->pn", u, F.normalize(item_sc[torch.as_tensor(np.array(negatives, dtype=np.int64))], dim=-1))
        per_pair = (pos > neg).float().mean(1) + 0.5 * (pos == neg).float().mean(1)
    return float(per_pair.mean())
