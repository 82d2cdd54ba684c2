"""RatingsOracle levels, the no-leakage rule, and RF-DPO preference construction (Align3GR's rule)."""

from __future__ import annotations

import numpy as np
import pytest

from align3gr_kit.data.schema import DataError, RecDataset, make_interactions, make_items, make_users
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.dpo.preferences import (
    TooFewPreferences,
    build_rf_preferences,
    held_out_items,
    liked_next_item,
    sample_prompts,
)
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
    assert np.array_equal(oracle.ratings([0, 0, 1, 1], [3, 5, 4, 0]), [4, np.nan, 1, np.nan], equal_nan=True)


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
    assert np.isnan(Even().ratings([0, 0], [2, 3])).all()
    with pytest.raises(ValueError, match="aligned"):
        Even().levels([0], [1, 2])


class _ItemLevels(FeedbackOracle):
    """Grades by item only: items 0, 1 disliked; 2, 4 neutral; 3, 5, 6 liked."""

    table = {0: "disliked", 1: "disliked", 2: "neutral", 3: "liked", 4: "neutral", 5: "liked", 6: "liked"}

    def level(self, user_id, item_id):
        return self.table.get(int(item_id))


def _rf_inputs():
    ds = _dataset()
    split = leave_one_out(ds, max_history=20)
    table = ScidTable(np.array([[k, k % 2, k % 3] for k in range(7)]), "item")
    samples = sample_prompts(split.train, 0, 0, "rf")
    return ds, split, table, samples, [f"p{k}" for k in range(len(samples))]


def test_rf_preferences_by_hand():
    ds, split, table, samples, prompts = _rf_inputs()
    # user 0 training samples: target 1 (logged 1), 2 (3), 3 (4, liked), 4 (2); user 1: target 5 (4, liked), 4 (1)
    assert list(zip(samples.user_id, samples.target)) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 4)]
    held = held_out_items(split)
    assert held == {0: {5, 6}, 1: {3, 2}}
    # every beam starts with the true next item, and holds the users' validation/test items 5, 6, 2, 3
    beams = np.column_stack([samples.target.to_numpy(), np.tile([5, 6, 0, 2, 1, 4, 3, -1], (len(samples), 1))])
    observed = RatingsOracle(ds)
    easy = build_rf_preferences(samples, prompts, table, _ItemLevels(), "easy", 3, 0, beams, observed, held)
    by = {e["prompt"]: e for e in easy.examples}
    # only the prompts whose next item was logged liked; no later item stands in for the others
    assert sorted(by) == ["p2", "p4"]
    assert easy.stats["skipped_not_liked"] == 4 and easy.stats["examples"] == 2
    assert by["p2"]["chosen_item"] == 3 and by["p2"]["rejected_items"] == [0, 1]  # 5, 6 held out for user 0
    assert by["p4"]["chosen_item"] == 5 and by["p4"]["rejected_items"] == [0, 1]
    assert by["p4"]["rejected_levels"] == ["disliked", "disliked"] and by["p4"]["from_beams"] == 2
    hard = build_rf_preferences(samples, prompts, table, _ItemLevels(), "hard", 3, 0, beams, observed, held)
    by = {e["prompt"]: e for e in hard.examples}
    # user 0: 2 and 4 neutral (5, 6 held out); user 1: 2 is a held-out item, 4 stays
    assert by["p2"]["rejected_items"] == [2, 4] and by["p4"]["rejected_items"] == [4]
    assert hard.stats["from_beams_share"] == 1.0 and hard.stats["fallback_share"] == 0.0
    # shown and graded, chosen and held-out items aside: user 0 sees 0 1 2 4, user 1 sees 0 1 4 6
    assert {k: v for k, v in hard.stats.items() if k.startswith("shown/")} == {
        "shown/disliked": 4, "shown/neutral": 3, "shown/liked": 1, "shown/unknown": 0}


def test_rf_prompts_are_drawn_among_liked_next_items():
    ds, split, table, _, _ = _rf_inputs()
    observed = RatingsOracle(ds)
    liked = liked_next_item(split.train, observed)
    # by hand (see test_rf_preferences_by_hand): user 0's targets 1 2 3 4 logged 1 3 4 2, user 1's 5 4 logged 4 1
    assert liked.tolist() == [False, False, True, False, True, False]
    every = sample_prompts(split.train, 0, 0, "rf/easy")
    pool = sample_prompts(split.train, 0, 0, "rf/easy", eligible=liked)
    # only the liked ones, with the position t counted over the user's whole training sequence
    assert list(zip(pool.user_id, pool.target, pool.t)) == [(0, 3, 3), (1, 5, 1)]
    assert pool.t.tolist() == every.t[liked].tolist()
    one = sample_prompts(split.train, 1, 0, "rf/easy", eligible=liked)
    assert len(one) == 1 and observed.level(int(one.user_id[0]), int(one.target[0])) == "liked"
    beams = np.tile([0, 1, 2, 4, 6], (len(pool), 1))
    prefs = build_rf_preferences(pool, ["a", "b"], table, _ItemLevels(), "easy", 3, 0, beams, observed,
                                 held_out_items(split))
    assert prefs.stats["skipped_not_liked"] == 0 and prefs.stats["examples"] == 2
    with pytest.raises(ValueError, match="one flag per training sample"):
        sample_prompts(split.train, 0, 0, "rf", eligible=liked[:3])


def test_rf_catalogue_fallback_is_counted_and_avoids_consumed_items():
    ds, split, table, samples, prompts = _rf_inputs()
    no_beams = np.full((len(samples), 4), -1)
    observed = RatingsOracle(ds)
    every = type("Every", (FeedbackOracle,), {"level": lambda self, u, i: "neutral"})()
    prefs = build_rf_preferences(samples, prompts, table, every, "hard", 5, 0, no_beams, observed,
                                 held_out_items(split), fallback="catalogue")
    by = {e["prompt"]: e for e in prefs.examples}
    # user 0 consumed 0..4 in training and holds out 5, 6: nothing is left; user 1 (training 6, 5, 4;
    # held out 3, 2) can only get 0 and 1
    assert sorted(by) == ["p4"] and sorted(by["p4"]["rejected_items"]) == [0, 1] and by["p4"]["from_beams"] == 0
    assert prefs.stats["fallback_share"] == 1.0 and prefs.stats["from_fallback"] == 2
    # without the fallback nothing was shown, so the stage says so instead of training on nothing
    with pytest.raises(TooFewPreferences, match="2 because no shown item was graded neutral"):
        build_rf_preferences(samples, prompts, table, every, "hard", 5, 0, no_beams, observed, held_out_items(split))


def test_rf_too_few_examples_says_so():
    ds, split, table, samples, prompts = _rf_inputs()
    beams = np.tile([0, 1, 2, 4], (len(samples), 1))
    with pytest.raises(TooFewPreferences, match="stage 'easy': 2 preference example.*4 skipped because"):
        build_rf_preferences(samples, prompts, table, _ItemLevels(), "easy", 3, 0, beams, RatingsOracle(ds),
                             held_out_items(split), min_examples=3)


def test_rf_rules_hold_on_generated_data_with_the_simulator():
    from align3gr_kit.data.synthetic import generate_synthetic
    from align3gr_kit.feedback import SimulatorOracle

    ds = generate_synthetic(120, 60, seed=4)
    split = leave_one_out(ds, max_history=20)
    table = ScidTable(np.array([[k // 16, (k // 4) % 4, k % 4] for k in range(ds.n_items)]), "item")
    samples = sample_prompts(split.train, 300, 0, "rf")
    held = held_out_items(split)
    rng = np.random.default_rng(0)
    # beams: the true next item, the user's held-out items and random catalogue items, in random order
    beams = np.array([rng.permutation([t, *held[u], *rng.choice(ds.n_items, 12, replace=False)])
                      for u, t in zip(samples.user_id, samples.target)])
    observed, sim = RatingsOracle(ds), SimulatorOracle.fit(ds)
    for stage, wanted in (("easy", {"disliked"}), ("hard", {"neutral"}), ("all", {"disliked", "neutral"})):
        prefs = build_rf_preferences(samples, [str(k) for k in range(len(samples))], table, sim, stage, 5, 0, beams,
                                     observed, held)
        assert len(prefs.examples) > 20
        for e in prefs.examples:
            # chosen is the true next item, logged liked, never a later item
            assert e["chosen_item"] == e["target"] and observed.level(e["user_id"], e["target"]) == "liked"
            # the true next item and the held-out items are never rejected
            assert e["target"] not in e["rejected_items"] and not held[e["user_id"]] & set(e["rejected_items"])
            # the stage's levels are the oracle's grades
            assert e["rejected_levels"] == sim.levels([e["user_id"]] * len(e["rejected_items"]), e["rejected_items"])
            assert set(e["rejected_levels"]) <= wanted and len(set(e["rejected_items"])) == len(e["rejected_items"])
            assert e["from_beams"] == len(e["rejected_items"])
        n_liked = sum(observed.level(u, t) == "liked" for u, t in zip(samples.user_id, samples.target))
        assert prefs.stats["skipped_not_liked"] == len(samples) - n_liked
    # control: without the rule, some of the last stage's prompts would have rejected a held-out item
    # or the true next item (logged liked, yet graded neutral or disliked by the simulator)
    assert sum(sim.level(e["user_id"], h) in wanted for e in prefs.examples for h in held[e["user_id"]]) > 5
    assert sum(sim.level(e["user_id"], e["target"]) in wanted for e in prefs.examples) > 5


def test_level_counts_table():
    from align3gr_kit.dpo.figures import level_counts

    t = level_counts(["liked", "liked", None, "disliked"])
    assert t.to_dict("list") == {"level": ["disliked", "liked", "unrated"], "count": [1, 2, 1], "share": [0.25, 0.5, 0.25]}
