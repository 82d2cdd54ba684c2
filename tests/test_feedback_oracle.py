"""RatingsOracle levels, the no-leakage rule, and RF-DPO preference construction."""

from __future__ import annotations

import numpy as np
import pytest

from align3gr_kit.data.schema import DataError, RecDataset, make_interactions, make_items, make_users
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.dpo.preferences import build_rf_preferences, sample_prompts
from align3gr_kit.feedback import FeedbackOracle, RatingsOracle, rating_level
from align3gr_kit.scid import ScidTable


def _dataset(ratings: bool = True) -> RecDataset:
    # user 0: items 0..6 at times 1..7 with ratings 5,1,3,4,2,5,1  (valid = item 5, test = item 6)
    # user 1: items 6,5,4,3,2 with ratings 4,4,1,5,5 (out of time order in the table on purpose)
    u = [0] * 7 + [1] * 5
    i = [0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6]
    t = [1, 2, 3, 4, 5, 6, 7, 50, 40, 30, 20, 10]
    r = [5, 1, 3, 4, 2, 5, 1, 5, 5, 1, 4, 4]
    items = make_items([{"raw_id": f"i{k}", "title": f"item {k}"} for k in range(7)], "test")
    users = make_users([{"raw_id": "u0"}, {"raw_id": "u1"}], "test")
    return RecDataset("hand", items, users, make_interactions(u, i, t, r if ratings else None), "test")


def test_rating_levels():
    assert [rating_level(x) for x in (1, 2, 3, 4, 5)] == ["disliked", "neutral", "neutral", "liked", "liked"]
    assert rating_level(1.5) == "disliked" and rating_level(3.5) == "neutral" and rating_level(float("nan")) is None


def test_ratings_oracle_on_hand_made_ratings():
    oracle = RatingsOracle(_dataset())
    assert [oracle.level(0, k) for k in range(5)] == ["liked", "disliked", "neutral", "liked", "neutral"]
    # user 0's last two interactions (valid item 5 rated 5, test item 6 rated 1) are never revealed
    assert oracle.level(0, 5) is None and oracle.level(0, 6) is None
    # user 1 chronological: 6(t10) 5(t20) 4(t30) 3(t40) 2(t50) -> training = 6, 5, 4
    assert oracle.train_items(1) == [6, 5, 4]
    assert oracle.levels([1, 1, 1, 1, 1], [6, 5, 4, 3, 2]) == ["liked", "liked", "disliked", None, None]
    assert oracle.level(1, 0) is None  # never interacted
    assert oracle.rated_items(0, "liked") == [0, 3] and oracle.rated_items(0, "neutral") == [2, 4]


def test_oracle_training_part_matches_the_split():
    ds = _dataset()
    split = leave_one_out(ds, max_history=20)
    oracle = RatingsOracle(ds)
    for u, seq in split.train_sequences.items():
        assert oracle.train_items(u) == seq.tolist()
    for u, target in zip(split.valid.user_id, split.valid.target):
        assert oracle.level(u, target) is None
    for u, target in zip(split.test.user_id, split.test.target):
        assert oracle.level(u, target) is None


def test_dataset_without_ratings_names_the_rated_loaders():
    with pytest.raises(DataError, match="synthetic, ml-100k, amazon2018; lcrec has none"):
        RatingsOracle(_dataset(ratings=False))


def test_default_batched_levels_loops_over_level():
    class Even(FeedbackOracle):
        def level(self, user_id, item_id):
            return "liked" if item_id % 2 == 0 else None

    assert Even().levels([0, 0, 0], [2, 3, 4]) == ["liked", None, "liked"]
    assert Even().rated_items(0, "liked") == []
    with pytest.raises(ValueError, match="aligned"):
        Even().levels([0], [1, 2])


def test_rf_preferences_easy_and_hard():
    ds = _dataset()
    split = leave_one_out(ds, max_history=20)
    oracle = RatingsOracle(ds)
    table = ScidTable(np.array([[k, k % 2, k % 3] for k in range(7)]), "item")
    samples = sample_prompts(split.train, 0, 0, "rf")
    # user 0 training samples: t=1 target 1 (disliked), t=2 target 2 (neutral), t=3 target 3 (liked), t=4 target 4
    # user 1 training samples: t=1 target 5 (liked), t=2 target 4 (disliked)
    assert list(zip(samples.user_id, samples.target, samples.t)) == [(0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4), (1, 5, 1), (1, 4, 2)]
    prompts = [f"p{k}" for k in range(len(samples))]
    beams = np.array([[1, 2, 4, 0, 6, -1]] * len(samples))
    easy = build_rf_preferences(samples, prompts, table, oracle, "easy", 3, 0, beams, split.train_sequences)
    by_prompt = {e["prompt"]: e for e in easy}
    # user 0, target 1 is disliked -> chosen = next liked later item (3); rejected = disliked beam item 1
    assert by_prompt["p0"]["chosen_item"] == 3 and not by_prompt["p0"]["chosen_is_target"]
    assert by_prompt["p0"]["rejected_items"] == [1] and by_prompt["p0"]["from_beams"] == 1
    # target 3 liked -> chosen = target
    assert by_prompt["p2"]["chosen_item"] == 3 and by_prompt["p2"]["rejected_levels"] == ["disliked"]
    # user 0, target 4 (neutral) has no later liked training item -> skipped
    assert "p3" not in by_prompt
    # user 1: beams judged: 6 liked, 4 disliked, others unknown -> rejected [4]
    assert by_prompt["p4"]["chosen_item"] == 5 and by_prompt["p4"]["rejected_items"] == [4]
    hard = build_rf_preferences(samples, prompts, table, oracle, "hard", 3, 0, beams, split.train_sequences)
    for e in hard:
        assert set(e["rejected_levels"]) == {"neutral"}
        assert all(oracle.level(e["user_id"], i) == "neutral" for i in e["rejected_items"])
        assert oracle.level(e["user_id"], e["chosen_item"]) == "liked"
    # user 1 has no neutral training item -> no hard example for user 1
    assert {e["user_id"] for e in hard} == {0}


def test_rf_fallback_to_rated_items_when_beams_miss():
    ds = _dataset()
    split = leave_one_out(ds, max_history=20)
    oracle = RatingsOracle(ds)
    table = ScidTable(np.array([[k, k % 2, k % 3] for k in range(7)]), "item")
    samples = sample_prompts(split.train, 0, 0, "rf")
    no_beams = np.full((len(samples), 4), -1)
    hard = build_rf_preferences(samples, [str(k) for k in range(len(samples))], table, oracle, "hard", 5, 0, no_beams,
                                split.train_sequences)
    for e in hard:
        assert e["from_beams"] == 0 and sorted(e["rejected_items"]) == [2, 4]  # user 0's neutral training items


def test_level_counts_table():
    from align3gr_kit.dpo.figures import level_counts

    t = level_counts(["liked", "liked", None, "disliked"])
    assert t.to_dict("list") == {"level": ["disliked", "liked", "unrated"], "count": [1, 2, 1], "share": [0.25, 0.5, 0.25]}
