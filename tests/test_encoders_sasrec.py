"""SASRec: training only on the training split (leakage guard), learning, ranking and baselines."""

import copy

import numpy as np
import pytest
import torch

from align3gr_kit.baselines.popularity import popularity_counts, run_popularity_baseline
from align3gr_kit.baselines.sasrec import run_sasrec_baseline
from align3gr_kit.config import RunConfig
from align3gr_kit.data.schema import RecDataset, make_interactions, make_items, make_users
from align3gr_kit.data.split import Split, leave_one_out
from align3gr_kit.config import SASRecParams
from align3gr_kit.encoders.sasrec import (SASRec, load_item_cf, mean_item_embedding,
                                          train_sasrec, training_windows)
from align3gr_kit.metrics import metrics_from_ranks, rank_metrics, target_ranks

N_ITEMS = 40


def cyclic_dataset(n_users: int = 80, length: int = 8, seed: int = 0, sentinels: bool = False) -> RecDataset:
    """Users walk a cycle of 4 groups of 10 items: item i is followed by (i + 1) mod 40 mostly.

    With ``sentinels``, items 40-43 occur only as test targets and 44-47 only as validation targets.
    """
    rng = np.random.default_rng(seed)
    n_items = N_ITEMS + (8 if sentinels else 0)
    uu, ii, tt = [], [], []
    for u in range(n_users):
        start = int(rng.integers(0, N_ITEMS))
        seq = [(start + k) % N_ITEMS for k in range(length)]
        if sentinels and u < 8:
            if u < 4:
                seq[-1] = N_ITEMS + u
            else:
                seq[-2] = N_ITEMS + u
        for t, it in enumerate(seq):
            uu.append(u), ii.append(it), tt.append(t)
    items = make_items([{"raw_id": f"i{i}", "title": f"item {i}"} for i in range(n_items)], "test")
    users = make_users([{"raw_id": f"u{u}", "profile": f"user {u}"} for u in range(n_users)], "test")
    return RecDataset("cyclic", items, users, make_interactions(uu, ii, tt), "test").validate()


FAST = SASRecParams(dim=16, layers=1, heads=2, dropout=0.0, epochs=3, patience=0, lr=5e-3,
                    batch_size=32)


def test_training_windows_cover_each_transition_once():
    seqs = {0: np.arange(12), 1: np.array([5]), 2: np.array([3, 4])}
    inp, tgt = training_windows(seqs, max_len=5)
    pairs = sorted((int(a) - 1, int(b) - 1) for a, b in zip(inp.ravel(), tgt.ravel()) if b > 0)
    expected = sorted([(i, i + 1) for i in range(11)] + [(3, 4)])
    assert pairs == expected
    assert inp.shape[1] == 5 and ((inp > 0) == (tgt > 0)).all()


def test_cf_encoder_never_sees_validation_or_test_items():
    ds = cyclic_dataset(sentinels=True)
    split = leave_one_out(ds, 5)
    sentinel_rows = torch.arange(N_ITEMS, N_ITEMS + 8) + 1  # +1: row 0 is padding
    torch.manual_seed(0)
    model = SASRec(ds.n_items, FAST.dim, FAST.layers, FAST.heads, FAST.dropout, 5)
    init = copy.deepcopy(model.item_emb.weight.detach())
    result = train_sasrec(split, ds.n_items, FAST, seed=0, model=model, progress=False)
    after = result.model.item_emb.weight.detach()
    assert torch.equal(after[sentinel_rows], init[sentinel_rows])  # never an input, target or softmax logit
    assert not torch.equal(after[1:N_ITEMS + 1], init[1:N_ITEMS + 1])  # ... while training items moved
    assert not result.trained_items[N_ITEMS:].any() and result.trained_items[:N_ITEMS].all()
    # Control: the same check FAILS for a split whose training sequences include the held-out items.
    leaky = Split(split.train, split.valid, split.test, ds.sequences(), split.max_history)
    torch.manual_seed(0)
    model2 = SASRec(ds.n_items, FAST.dim, FAST.layers, FAST.heads, FAST.dropout, 5)
    init2 = copy.deepcopy(model2.item_emb.weight.detach())
    train_sasrec(leaky, ds.n_items, FAST, seed=0, model=model2, progress=False)
    assert not torch.equal(model2.item_emb.weight.detach()[sentinel_rows], init2[sentinel_rows])


def test_sasrec_learns_the_cycle_and_beats_popularity():
    ds = cyclic_dataset()
    split = leave_one_out(ds, 5)
    params = SASRecParams(dim=32, layers=1, heads=2, dropout=0.0, epochs=15, patience=0, lr=1e-2,
                          batch_size=32)
    result = train_sasrec(split, ds.n_items, params, seed=0, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    test = split.test
    m = metrics_from_ranks(result.model.target_ranks(test.history.tolist(), test.target.to_numpy()))
    pop = run_popularity_baseline(RunConfig(), ds, split)["test"]
    assert m["recall@5"] > 0.8 > pop["recall@10"]


def test_target_ranks_agree_with_full_topk_ranking():
    ds = cyclic_dataset(n_users=30)
    split = leave_one_out(ds, 5)
    model = train_sasrec(split, ds.n_items, FAST, seed=0, progress=False).model
    hist, tgt = split.test.history.tolist(), split.test.target.to_numpy()
    full = model.topk(hist, k=ds.n_items)
    assert full.shape == (30, ds.n_items)
    np.testing.assert_array_equal(model.target_ranks(hist, tgt), target_ranks(full, tgt))
    assert rank_metrics(model.topk(hist, 10), tgt) == metrics_from_ranks(model.target_ranks(hist, tgt))


def test_same_seed_same_model():
    ds = cyclic_dataset(n_users=30)
    split = leave_one_out(ds, 5)
    a = train_sasrec(split, ds.n_items, FAST, seed=3, progress=False).model.item_embeddings()
    b = train_sasrec(split, ds.n_items, FAST, seed=3, progress=False).model.item_embeddings()
    assert torch.equal(a, b)


def test_baselines_report_the_fixed_keys():
    ds = cyclic_dataset(n_users=40)
    split = leave_one_out(ds, 5)
    cfg = RunConfig().override({"tokenizer.sasrec.dim": 16, "tokenizer.sasrec.layers": 1, "tokenizer.sasrec.epochs": 2,
                                "tokenizer.sasrec.heads": 2})
    for out in (run_sasrec_baseline(cfg, ds, split, progress=False), run_popularity_baseline(cfg, ds, split)):
        assert set(out) >= {"valid", "test", "seconds"}
        for part in ("valid", "test"):
            assert set(out[part]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
            assert all(0.0 <= v <= 1.0 for v in out[part].values())


def test_popularity_counts_use_training_sequences_only():
    ds = cyclic_dataset(sentinels=True)
    split = leave_one_out(ds, 5)
    counts = popularity_counts(split, ds.n_items)
    assert counts[N_ITEMS:].sum() == 0  # sentinels are held-out only
    assert counts.sum() == sum(len(s) for s in split.train_sequences.values())
    # hand check on a 3-user split: items 1 and 2 occur twice in training, item 0 once
    seqs = {0: np.array([1, 2]), 1: np.array([2, 1]), 2: np.array([0])}
    tiny = Split(split.train.iloc[:0], split.valid.iloc[:0], split.test.iloc[:0], seqs, 5)
    assert popularity_counts(tiny, 4).tolist() == [1, 2, 2, 0]


def test_given_cf_embeddings(tmp_path):
    emb = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    torch.save(emb, tmp_path / "cf.pt")
    np.testing.assert_array_equal(load_item_cf(str(tmp_path / "cf.pt"), 4), emb.numpy())
    with pytest.raises(ValueError, match="one row per item"):
        load_item_cf(str(tmp_path / "cf.pt"), 5)
    user = mean_item_embedding(emb.numpy(), {0: np.array([0, 2]), 1: np.array([3])}, 2)
    np.testing.assert_allclose(user, [[3, 4, 5], [9, 10, 11]])
