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
    rf_chosen_item,
    sample_prompts,
    training_items,
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
    assert list(zip(samples.user_id, samples.target)) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 4)]
    held, train = held_out_items(split), training_items(split)
    assert held == {0: {5, 6}, 1: {3, 2}} and train == {0: {0, 1, 2, 3, 4}, 1: {6, 5, 4}}
    # every beam starts with the true next item, then the users' validation/test items 5, 6, 2, 3 and others
    beams = np.column_stack([samples.target.to_numpy(), np.tile([5, 6, 0, 2, 1, 4, 3, -1], (len(samples), 1))])
    easy = build_rf_preferences(samples, prompts, table, _ItemLevels(), "easy", 3, 0, beams, train, held)
    by = {e["prompt"]: e for e in easy.examples}
    # Fig. 2: the next item when shown and liked (p2: 3, p4: 5), else the first liked shown item that is
    # neither held out nor another training item: none here (user 0: 5, 6 held out, 3 a training item;
    # user 1: 3 held out, 5, 6 training items). p2's disliked shown items 0, 1 are user 0's training items
    assert sorted(by) == ["p4"] and easy.stats["skipped_no_chosen"] == 4 and easy.stats["skipped_no_rejected"] == 1
    assert by["p4"]["chosen_item"] == 5 and by["p4"]["rejected_items"] == [0, 1] and easy.stats["chosen_next"] == 1
    hard = build_rf_preferences(samples, prompts, table, _ItemLevels(), "hard", 3, 0, beams, train, held,
                                min_examples=0)
    by = {e["prompt"]: e for e in hard.examples}
    # user 1 (training 4, 5, 6): neutral shown items 2 (a TEST item of user 1: not banned) and 4 (training: banned)
    assert by["p4"]["rejected_items"] == [2] and by["p4"]["rejected_levels"] == ["neutral"]
    # the best-graded rule: the highest-rated liked shown item allowed, whatever the next item
    rated = _Rated()
    beam = [4, 3, 6, 5, 0]
    levels, ratings = rated.levels([9] * 5, beam), rated.ratings([9] * 5, beam)
    assert rf_chosen_item(9, 4, beam, levels, ratings, "best", rated, set()) == 5
    assert rf_chosen_item(9, 4, beam, levels, ratings, "best", rated, {5}) == 6
    assert rf_chosen_item(9, 3, beam, levels, ratings, "next_or_best", rated, set()) == 3
    assert rf_chosen_item(9, 4, beam, levels, ratings, "next_or_best", rated, set()) == 5
    assert rf_chosen_item(9, 4, beam, levels, ratings, "next", rated, set()) is None


class _Rated(_ItemLevels):
    """_ItemLevels with ratings: liked items 3, 5, 6 rated 4.0, 4.8, 4.2."""

    def ratings(self, user_ids, item_ids):
        return np.array([{3: 4.0, 5: 4.8, 6: 4.2}.get(int(i), 1.0) for i in item_ids])


def test_rf_catalogue_fallback_is_counted_and_avoids_training_items():
    ds, split, table, samples, prompts = _rf_inputs()
    beams = np.column_stack([samples.target.to_numpy(), np.full((len(samples), 3), -1)])
    every = type("Every", (FeedbackOracle,), {"level": lambda self, u, i: "liked" if i in (3, 5) else "neutral"})()
    prefs = build_rf_preferences(samples, prompts, table, every, "hard", 5, 0, beams, training_items(split),
                                 held_out_items(split), fallback="catalogue")
    by = {e["prompt"]: e for e in prefs.examples}
    # user 0 (p2, next item 3 liked) trained on 0..4: only 6 (held out, not banned) is neutral and left;
    # user 1 (p4, next item 5) trained on 4, 5, 6: 0, 1, 2 (its test item too) remain
    assert sorted(by["p2"]["rejected_items"]) == [6] and sorted(by["p4"]["rejected_items"]) == [0, 1, 2]
    assert prefs.stats["fallback_share"] == 1.0 and by["p4"]["from_beams"] == 0
    with pytest.raises(TooFewPreferences, match="because no shown item was graded neutral"):
        build_rf_preferences(samples, prompts, table, every, "hard", 5, 0, beams, training_items(split),
                             held_out_items(split))


def test_rf_rules_hold_on_generated_data_with_the_simulator():
    from align3gr_kit.data.synthetic import generate_synthetic
    from align3gr_kit.feedback import SimulatorOracle

    ds = generate_synthetic(120, 60, seed=4)
    split = leave_one_out(ds, max_history=20)
    table = ScidTable(np.array([[k // 16, (k // 4) % 4, k % 4] for k in range(ds.n_items)]), "item")
    samples = sample_prompts(split.train, 300, 0, "rf")
    held, train = held_out_items(split), training_items(split)
    rng = np.random.default_rng(0)
    # beams: the true next item, the user's held-out items and random catalogue items, in random order
    beams = np.array([rng.permutation([t, *held[u], *rng.choice(ds.n_items, 12, replace=False)])
                      for u, t in zip(samples.user_id, samples.target)])
    sim = SimulatorOracle.fit(ds, sampled=True)
    n_held_rejected = 0
    for stage, wanted in (("easy", {"disliked"}), ("hard", {"neutral"}), ("all", {"disliked", "neutral"})):
        prefs = build_rf_preferences(samples, [str(k) for k in range(len(samples))], table, sim, stage, 5, 0, beams,
                                     train, held)
        assert len(prefs.examples) > 20
        for e in prefs.examples:
            u, row = e["user_id"], int(e["prompt"])
            # chosen: a shown item graded liked, never a held-out item or another training item
            assert e["chosen_item"] in beams[row] and sim.level(u, e["chosen_item"]) == "liked"
            assert e["chosen_item"] not in held[u] and (e["chosen_item"] == e["target"] or e["chosen_item"] not in train[u])
            # rejected: never the chosen item nor a training item; the stage's levels are the oracle's grades
            assert e["chosen_item"] not in e["rejected_items"] and not train[u] & set(e["rejected_items"])
            assert e["rejected_levels"] == sim.levels([u] * len(e["rejected_items"]), e["rejected_items"])
            assert set(e["rejected_levels"]) <= wanted and len(set(e["rejected_items"])) == len(e["rejected_items"])
            n_held_rejected += len(held[u] & set(e["rejected_items"]))
        assert len(prefs.shown) >= len(prefs.examples)
    # control: held-out items are not banned, so some were rejected like any other shown item
    assert n_held_rejected > 0
