"""L_U2I (paper eq. 1) against a hand computation, and the held-out AUC against sklearn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from align3gr_kit.tokenizer.losses import heldout_negatives, u2i_auc, u2i_loss


def test_u2i_loss_matches_hand_computation_3x3():
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    items = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tau = 0.5
    r = 1 / math.sqrt(2)
    # cosine similarities written out by hand: rows = users, columns = items
    sims = [[1.0, r, 0.0], [0.0, r, 1.0], [r, 1.0, r]]
    expected = 0.0
    for b in range(3):
        expected += -sims[b][b] / tau + math.log(sum(math.exp(s / tau) for s in sims[b]))
    expected /= 3
    got = u2i_loss(users, items, tau).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # the first two pairs alone: each row's softmax now runs over two items only
    two = (-2 + math.log(math.exp(2) + math.exp(2 * r)) - 2 * r + math.log(1 + math.exp(2 * r))) / 2
    assert u2i_loss(users[:2], items[:2], tau).item() == pytest.approx(two, rel=1e-6)


def test_u2i_loss_prefers_aligned_pairs_and_checks_shapes():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    aligned = u2i_loss(x, x, 0.1).item()
    shuffled = u2i_loss(x, x[torch.randperm(8)], 0.1).item()
    assert aligned < shuffled
    with pytest.raises(ValueError, match="equal shapes"):
        u2i_loss(x, x[:3], 0.1)


def test_auc_equals_sklearn_per_user_mean():
    rng = np.random.default_rng(0)
    user_sc = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float32)
    item_sc = torch.tensor(rng.normal(size=(30, 3)), dtype=torch.float32)
    users = np.arange(5)
    pos = rng.integers(0, 30, 5)
    neg = heldout_negatives(users, pos, 30, n_neg=7, seed=1)
    assert neg.shape == (5, 7) and not (neg == pos[:, None]).any() and neg.min() >= 0 and neg.max() < 30
    un = torch.nn.functional.normalize(user_sc, dim=-1).numpy()
    inn = torch.nn.functional.normalize(item_sc, dim=-1).numpy()
    ref = []
    for p in range(5):
        scores = np.r_[un[p] @ inn[pos[p]], inn[neg[p]] @ un[p]]
        ref.append(roc_auc_score(np.r_[1, np.zeros(7)], scores))
    assert u2i_auc(user_sc, item_sc, users, pos, neg) == pytest.approx(float(np.mean(ref)), abs=1e-6)
