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


# SCIDs of 6 items over 3 levels; target item 0 = (1, 2, 3).
CODES = [[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 9], [7, 2, 3], [1, 2, 5]]


def test_prefix_hits_equal_hand_values():
    from align3gr_kit.metrics import prefix_hits

    ranked = [[1, 3],    # item 1 shares levels 1-2 with item 0
              [4, 2],    # item 4 shares no first level (7 != 1); item 2 shares level 1
              [0, -1],   # the target itself: all three levels
              [3, -1]]   # nothing
    got = prefix_hits(ranked, [0, 0, 0, 0], CODES, k=2)
    assert got.tolist() == pytest.approx([3 / 4, 2 / 4, 1 / 4])
    # the last level is Recall@2 when SCIDs are unique
    assert got[-1] == rank_metrics(ranked, [0] * 4, ks=(2,))["recall@2"]


def test_chance_prefix_hits_equal_hand_values():
    from align3gr_kit.metrics import chance_prefix_hits

    # n = 6, k = 2. Level 1: 4 items start with 1 -> miss = C(2,2)/C(6,2) = 1/15.
    # Level 2: items 0, 1, 5 share (1, 2) -> miss = C(3,2)/C(6,2) = 3/15. Level 3: only item 0 -> miss = C(5,2)/15 = 10/15.
    got = chance_prefix_hits([0], CODES, k=2)
    assert got.tolist() == pytest.approx([14 / 15, 12 / 15, 5 / 15])


def test_paired_hit_difference_against_hand_values():
    from align3gr_kit.metrics import paired_hit_difference

    # 20 users: 6 hit by both, 1 by A alone, 5 by B alone, 8 by neither.
    a = [1] * 6 + [1] + [0] * 5 + [0] * 8
    b = [1] * 6 + [0] + [1] * 5 + [0] * 8
    got = paired_hit_difference(a, b, n_boot=4000, seed=1)
    assert (got["only_a"], got["only_b"], got["users"]) == (1, 5, 20)
    assert got["recall_a"] == pytest.approx(7 / 20) and got["recall_b"] == pytest.approx(11 / 20)
    assert got["delta"] == pytest.approx(4 / 20)
    # McNemar exact, by hand: 6 discordant users, P(X <= 1 or X >= 5 | Bin(6, 1/2)) = 2 * (1 + 6) / 64
    assert got["p"] == pytest.approx(14 / 64)
    # Bootstrap 95% interval of the mean of d in {-1: 1 user, +1: 5 users, 0: 14}: var(d) = 6/20 - 0.2^2 = 0.26,
    # sd 0.5099, so the interval is about 0.2 +- 1.96 * 0.5099 / sqrt(20) = [-0.023, 0.423]
    assert got["ci_low"] < 0.2 < got["ci_high"]
    assert got["ci_low"] == pytest.approx(-0.023, abs=0.05) and got["ci_high"] == pytest.approx(0.423, abs=0.05)
    # identical models: no discordant user, p = 1, a zero-width interval
    same = paired_hit_difference(a, a)
    assert same["p"] == 1.0 and same["delta"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0
    # a clear difference is significant: 0 vs 12 discordant users
    clear = paired_hit_difference([0] * 12 + [0] * 8, [1] * 12 + [0] * 8)
    assert clear["p"] == pytest.approx(2 / 2 ** 12) and clear["ci_low"] > 0
    with pytest.raises(ValueError, match="one length"):
        paired_hit_difference([1, 0], [1])


def test_per_user_metric_averages_to_the_hand_values():
    from align3gr_kit.metrics import per_user_metric

    ranks = [0, 3, 7, -1]  # the targets' ranks in RANKED
    for key, v in HAND.items():
        assert per_user_metric(ranks, key).mean() == pytest.approx(v, abs=1e-6), key
    assert per_user_metric(ranks, "ndcg@10").tolist() == pytest.approx([1.0, 0.4306766, 0.3154649, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="recall@K or ndcg@K"):
        per_user_metric(ranks, "mrr@10")
