"""Leave-one-out split on hand-made sequences, persistence, and the k-core filter."""

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.data import DataError, RecDataset, Split, leave_one_out
from align3gr_kit.data.schema import kcore_filter, make_interactions, make_items, make_users


def _dataset(seqs: dict[int, list[int]], n_items: int, times=None) -> RecDataset:
    items = make_items([{"raw_id": f"i{i}", "title": f"item {i}"} for i in range(n_items)], "test")
    users = make_users([{"raw_id": f"u{u}"} for u in range(len(seqs))], "test")
    uu, ii, tt = [], [], []
    for u, seq in seqs.items():
        for pos, i in enumerate(seq):
            uu.append(u), ii.append(i), tt.append(times[u][pos] if times else pos)
    return RecDataset("hand", items, users, make_interactions(uu, ii, tt))


def test_leave_one_out_hand_example():
    # user 0: 0 1 2 3 4 ; user 1: 5 6 7 (the minimum: 3 interactions)
    ds = _dataset({0: [0, 1, 2, 3, 4], 1: [5, 6, 7]}, 8)
    sp = leave_one_out(ds, max_history=20)
    assert sp.test.to_dict("records") == [
        {"user_id": 0, "history": [0, 1, 2, 3], "target": 4},
        {"user_id": 1, "history": [5, 6], "target": 7},
    ]
    assert sp.valid.to_dict("records") == [
        {"user_id": 0, "history": [0, 1, 2], "target": 3},
        {"user_id": 1, "history": [5], "target": 6},
    ]
    # every earlier prefix is a training sample; user 1 has none (its only training item is 5)
    assert sp.train.to_dict("records") == [
        {"user_id": 0, "history": [0], "target": 1},
        {"user_id": 0, "history": [0, 1], "target": 2},
    ]
    assert sp.train_sequences[0].tolist() == [0, 1, 2] and sp.train_sequences[1].tolist() == [5]


def test_history_cap_and_chronological_order():
    # timestamps out of file order: the split must follow time, ties keep file order
    ds = _dataset({0: [10, 11, 12, 13, 14, 15]}, 16, times={0: [5, 1, 3, 3, 9, 0]})
    sp = leave_one_out(ds, max_history=2)
    # chronological: 15(t0) 11(t1) 12(t3) 13(t3) 10(t5) 14(t9)
    assert sp.test.iloc[0].history == [13, 10] and sp.test.iloc[0].target == 14
    assert sp.valid.iloc[0].history == [12, 13] and sp.valid.iloc[0].target == 10
    assert [h for h in sp.train.history] == [[15], [15, 11], [11, 12]]


def test_split_save_load_roundtrip(tmp_path, synthetic_small):
    sp = leave_one_out(synthetic_small, 20)
    sp.save(tmp_path / "split")
    back = Split.load(tmp_path / "split")
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(sp, name), getattr(back, name))
    assert set(back.train_sequences) == set(sp.train_sequences)
    for u, seq in sp.train_sequences.items():
        np.testing.assert_array_equal(seq, back.train_sequences[u])


def test_dataset_save_load_roundtrip(tmp_path, synthetic_small):
    synthetic_small.save(tmp_path / "ds")
    back = RecDataset.load(tmp_path / "ds")
    pd.testing.assert_frame_equal(back.interactions, synthetic_small.interactions)
    assert back.items.categories.tolist() == synthetic_small.items.categories.tolist()
    assert back.users.attributes.tolist() == synthetic_small.users.attributes.tolist()


def test_user_with_two_interactions_is_rejected():
    ds = _dataset({0: [0, 1, 2], 1: [3, 4]}, 5)
    with pytest.raises(DataError, match=r"user 'u1' has 2 interaction\(s\).*at least 3"):
        ds.validate()
    with pytest.raises(DataError, match="u1"):
        leave_one_out(ds)


def test_kcore_filter_is_iterative():
    # item c has one user; dropping it leaves user z with one item, so z must go in a second pass
    inter = pd.DataFrame({"user": list("xxyyzz"), "item": list("ababca")})
    out = kcore_filter(inter, 2)
    assert sorted(set(out.user)) == ["x", "y"] and sorted(set(out.item)) == ["a", "b"]
    assert len(out) == 4
    assert kcore_filter(inter, 3).empty
