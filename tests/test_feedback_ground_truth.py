"""The ground-truth oracle on generated data agrees with the generator's logged ratings; the
generator still makes the same tables; liked_share scores top-K lists."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from align3gr_kit.config import DataConfig
from align3gr_kit.data import RecDataset, load_dataset
from align3gr_kit.data.schema import DataError, make_interactions
from align3gr_kit.data.synthetic import generate_synthetic, generate_with_truth
from align3gr_kit.evaluate import liked_share
from align3gr_kit.feedback import FeedbackOracle, GroundTruthOracle
from align3gr_kit.feedback.simulator import levels_of


def test_generator_tables_unchanged_by_exposing_its_truth():
    # sha1 of the interactions table generate_synthetic(60, 40, seed=3) made before the truth was exposed
    ds = generate_synthetic(60, 40, seed=3)
    assert hashlib.sha1(ds.interactions.to_csv().encode()).hexdigest() == "9b311d5a7d8314cd62fb1f8664d40b400a68bace"


def test_ground_truth_agrees_with_the_logged_ratings():
    ds, truth = generate_with_truth(150, 48, seed=2)
    gt = GroundTruthOracle.from_dataset(ds)
    inter = ds.interactions
    u, i, r = inter.user_id.to_numpy(), inter.item_id.to_numpy(), inter.rating.to_numpy()
    # exactly: every logged rating is the oracle's noise-free rating plus the generator's noise, rounded and clipped
    np.testing.assert_array_equal(np.clip(np.rint(gt.expected(u, i) + truth.noise), 1, 5), r)
    assert abs(truth.noise.std() - 0.8) < 0.05  # the generator's N(0, 0.8) noise, nothing else
    # and by level: the noise-free level is the logged one for most interactions, far above chance
    agree = np.mean(levels_of(gt.ratings(u, i)) == levels_of(r))
    assert agree > 0.7
    assert gt.levels(u[:5].tolist(), i[:5].tolist()) == [gt.level(a, b) for a, b in zip(u[:5], i[:5])]


def test_ground_truth_after_filtering_and_saving(tmp_path):
    full, truth = generate_with_truth(120, 60, seed=5)
    ds = load_dataset(DataConfig(synthetic_users=120, synthetic_items=60, max_users=10), seed=5)
    ds = RecDataset.load(ds.save(tmp_path / "dataset"))
    gt = GroundTruthOracle.from_dataset(ds)
    users = np.array([int(x[1:]) for x in ds.users.raw_id])  # U00012 -> generated user 12
    items = np.array([int(x[1:]) for x in ds.items.raw_id])
    assert ds.n_items < 60  # the filter re-numbered the items
    u, i = np.meshgrid(np.arange(ds.n_users), np.arange(ds.n_items), indexing="ij")
    np.testing.assert_array_equal(gt.expected(u.ravel(), i.ravel()), truth.expected(users[u.ravel()], items[i.ravel()]))
    # and every re-numbered logged rating is still the oracle's rating plus that interaction's generated noise
    row = {(u, i): k for k, (u, i) in enumerate(zip(full.interactions.user_id, full.interactions.item_id))}
    inter = ds.interactions
    noise = truth.noise[[row[(users[u], items[i])] for u, i in zip(inter.user_id, inter.item_id)]]
    np.testing.assert_array_equal(np.clip(np.rint(gt.expected(inter.user_id, inter.item_id) + noise), 1, 5), inter.rating)


def test_ground_truth_refuses_other_data():
    ds = generate_synthetic(40, 30, seed=0)
    inter = ds.interactions.copy()
    inter.loc[0, "rating"] = 6 - inter.loc[0, "rating"] if inter.loc[0, "rating"] != 3 else 1
    edited = RecDataset(ds.name, ds.items, ds.users, inter, ds.source, dict(ds.extra))
    with pytest.raises(DataError, match="re-run 00_data"):
        GroundTruthOracle.from_dataset(edited)
    with pytest.raises(DataError, match="dpo.rf_oracle: simulator"):
        GroundTruthOracle.from_dataset(RecDataset("ml-100k", ds.items, ds.users, ds.interactions, "x"))


class _Table(FeedbackOracle):
    """Item k: rating k % 5 + 1 for every user; items >= 100 unknown."""

    def level(self, user_id, item_id):
        return None if item_id >= 100 else ("disliked", "neutral", "neutral", "liked", "liked")[item_id % 5]

    def ratings(self, user_ids, item_ids):
        return np.array([np.nan if i >= 100 else i % 5 + 1.0 for i in item_ids])


def test_liked_share_by_hand():
    items = np.array([[3, 4, 0, -1, 7], [1, 2, 100, 8, 9]])
    got = liked_share([0, 1], items, _Table(), k=4)
    # graded slots: 3 L, 4 L, 0 D | 1 N, 2 N, 8 L -> 3 liked of 6; ratings 4,5,1,2,3,4 -> 19/6; 6 of 7 filled graded
    assert got == {"liked_share@4": 0.5, "mean_rating@4": round(19 / 6, 4), "graded_share@4": round(6 / 7, 4), "users": 2}
    gt = GroundTruthOracle.from_matrix(np.array([[4.2, 0.3, 2.9], [3.6, 6.0, 1.4]]))
    assert liked_share([0, 1], np.array([[0, 1, 2], [0, 1, 2]]), gt, k=3) == {
        "liked_share@3": 0.5, "mean_rating@3": round((4.2 + 1 + 2.9 + 3.6 + 5 + 1.4) / 6, 4), "graded_share@3": 1.0,
        "users": 2}


def test_bare_dataset_has_no_truth():
    ds = generate_synthetic(30, 30, seed=0)
    ds.extra.pop("generator")
    bare = RecDataset(ds.name, ds.items, ds.users, make_interactions(ds.interactions.user_id, ds.interactions.item_id,
                                                                    ds.interactions.timestamp), ds.source, ds.extra)
    with pytest.raises(DataError, match="extra.generator"):
        GroundTruthOracle.from_dataset(bare)


def test_agreement_by_hand_and_the_simulator_against_the_truth():
    from align3gr_kit.feedback import SimulatorOracle, agreement

    expected = np.full((1, 101), 5.0)
    expected[0, :3] = [1.0, 4.2, 2.9]
    gt = GroundTruthOracle.from_matrix(expected)  # items 0..2: disliked, liked, neutral; every other item liked
    got = agreement(_Table(), gt, [0, 0, 0, 0], [3, 0, 2, 100])  # _Table: liked, disliked, neutral, None
    assert got["pairs"] == 3 and got["accuracy"] == 1.0 and got["macro_f1"] == 1.0 and got["oracle/liked"] == 0.3333
    got = agreement(_Table(), gt, [0, 0, 0], [0, 1, 2])  # disliked/neutral/neutral vs disliked/liked/neutral
    assert got["accuracy"] == 0.6667 and got["reference/liked"] == 0.3333 and got["oracle/neutral"] == 0.6667
    # the limit of a simulator fit on logged ratings (module docstring): far fewer dislikes than the truth
    ds = generate_synthetic(300, 100, seed=0)
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, ds.n_users, 3000), rng.integers(0, ds.n_items, 3000)
    got = agreement(SimulatorOracle.fit(ds), GroundTruthOracle.from_dataset(ds), u, i)
    assert got["reference/disliked"] > 0.3 > got["oracle/disliked"]
