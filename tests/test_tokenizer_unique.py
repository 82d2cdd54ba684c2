"""Unique SCIDs: the deterministic collision rule, also for identical inputs."""

import numpy as np

from align3gr_kit.config import TokenizerConfig
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.trainer import train_dual_tokenizer
from align3gr_kit.tokenizer.unique import append_unique_level, collisions, perplexity, utilisation


def test_rule_on_a_hand_example():
    codes = np.array([[4, 1, 9], [0, 0, 0], [4, 1, 9], [4, 1, 2], [4, 1, 9]])
    out = append_unique_level(codes)
    assert out.tolist() == [[4, 1, 9, 0], [0, 0, 0, 0], [4, 1, 9, 1], [4, 1, 2, 0], [4, 1, 9, 2]]
    assert collisions(codes) == 2 and collisions(out) == 0
    assert ScidTable(out, "item").collisions() == 0


def test_all_identical_rows_get_their_id_order():
    out = append_unique_level(np.zeros((6, 3), dtype=int))
    assert out[:, 3].tolist() == [0, 1, 2, 3, 4, 5]
    assert append_unique_level(np.zeros((0, 2), dtype=int)).shape == (0, 3)


def test_stats():
    codes = np.array([[0, 1], [0, 2], [1, 2], [1, 2]])
    assert utilisation(codes, 4) == [0.5, 0.5]
    np.testing.assert_allclose(perplexity(codes), [2.0, np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))])


def test_identical_embeddings_still_get_distinct_scids():
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 20
    items = rng.normal(size=(n_items, 8)).astype(np.float32)
    items[5:12] = items[5]  # seven items with the very same features
    users = rng.normal(size=(n_users, 8)).astype(np.float32)
    pairs = np.stack([np.repeat(np.arange(n_users), 3), rng.integers(0, n_items, n_users * 3)], 1)
    heldout = np.stack([np.arange(n_users), rng.integers(0, n_items, n_users)], 1)
    tcfg = TokenizerConfig(sc_dim=8, hidden_dim=16, code_dim=4, batch_size=16, phase1_max_epochs=2,
                           phase2_epochs=2, phase1_patience=1)
    model = train_dual_tokenizer(items, users, pairs, heldout, tcfg, seed=0, progress=False).model
    import torch

    raw = model.codes(torch.as_tensor(items), "item").numpy()
    assert (raw[5:12] == raw[5]).all()  # the RQ-VAE cannot tell them apart ...
    scids = ScidTable(append_unique_level(raw), "item")
    assert scids.collisions() == 0  # ... the extra level does
    extra = scids.codes[5:12, -1]
    assert (np.diff(extra) > 0).all()  # in item-id order (an earlier item may share the prefix too)
    first = np.flatnonzero((raw == raw[5]).all(1))
    assert scids.codes[first, -1].tolist() == list(range(len(first)))
    assert len({scids.string(i) for i in range(n_items)}) == n_items
