"""Recall@K and NDCG@K on a hand-made ranking whose answers were worked out by hand (not with the
kit's code). Reference for the formulas: Järvelin & Kekäläinen (2002), DCG with one relevant item,
ideal DCG 1, as used by LC-Rec/TIGER: NDCG@K = 1/log2(rank + 2) for a 0-based rank < K."""

import pytest

from align3gr_kit.metrics import rank_metrics

# Four users, twelve ranked items each (-1 pads a short list). Targets sit at 0-based ranks
# 0 (user 0), 3 (user 1), 7 (user 2) and nowhere (user 3).
RANKED = [
    [7, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12],
    [1, 2, 3, 7, 4, 5, 6, 8, 9, 10, 11, 12],
    [1, 2, 3, 4, 5, 6, 8, 7, 9, 10, -1, -1],
    [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13],
]
TARGETS = [7, 7, 7, 7]
# By hand: 1/log2(5) = ln 2 / ln 5 = 0.6931472 / 1.6094379 = 0.4306766,
#          1/log2(9) = ln 2 / ln 9 = 0.6931472 / 2.1972246 = 0.3154649.
HAND = {
    "recall@5": 2 / 4,                                  # ranks 0 and 3 are in the top 5
    "recall@10": 3 / 4,                                 # rank 7 joins; user 3 scores 0
    "ndcg@5": (1 + 0.4306766) / 4,                      # 0.35766915
    "ndcg@10": (1 + 0.4306766 + 0.3154649) / 4,         # 0.43653538
}


def test_recall_and_ndcg_equal_hand_values():
    got = rank_metrics(RANKED, TARGETS, ks=(5, 10))
    for k, v in HAND.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_a_single_user_at_rank_k_is_just_outside_the_cutoff():
    # rank 5 (0-based) is the sixth item: out of the top 5, inside the top 10 with gain 1/log2(7) = 0.3562072
    got = rank_metrics([[1, 2, 3, 4, 5, 9, 6, 7, 8, 10]], [9], ks=(5, 10))
    assert (got["recall@5"], got["ndcg@5"]) == (0.0, 0.0)
    assert got["recall@10"] == 1.0 and got["ndcg@10"] == pytest.approx(0.3562072, abs=1e-6)
