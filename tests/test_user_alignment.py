"""B2 held out of SFT for a seeded set of users, and the two directions measured on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align3gr_kit.config import ModelConfig, PromptConfig
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.prompts import build_sft_dataset
from align3gr_kit.user_alignment import (
    attribute_match,
    b2_heldout_users,
    evaluate_user_alignment,
    stated_attributes,
)

from test_prompts_builder import random_scids, tiny_dataset


def test_heldout_users_are_a_seeded_share():
    a = b2_heldout_users(1000, 0.1, seed=0)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(a, b2_heldout_users(1000, 0.1, seed=0))
    assert not np.array_equal(a, b2_heldout_users(1000, 0.1, seed=1))
    assert len(b2_heldout_users(1000, 0.0, seed=0)) == 0
    with pytest.raises(ValueError, match="b2_holdout"):
        b2_heldout_users(10, 1.0, seed=0)


def test_heldout_users_get_no_b2_row_and_nothing_else_changes():
    ds = tiny_dataset()
    split = leave_one_out(ds, 20)
    items, users = random_scids(ds.n_items, "item", 1), random_scids(ds.n_users, "user", 2)
    tasks = ["A", "B1", "B2", "C2"]
    full = build_sft_dataset(ds, split, items, users, PromptConfig(tasks=tasks), seed=0, progress=False).to_pandas()
    cut = build_sft_dataset(ds, split, items, users, PromptConfig(tasks=tasks, b2_holdout=0.5), seed=0,
                            progress=False).to_pandas()
    held = set(b2_heldout_users(ds.n_users, 0.5, seed=0).tolist())
    assert len(held) == 3
    b2 = cut[cut.task == "B2"]
    assert not set(b2.user_id) & held and set(b2.user_id) == set(range(6)) - held
    # the other users' B2 rows and every other task's rows are the very same rows
    keep = full[(full.task != "B2") | ~full.user_id.isin(held)].reset_index(drop=True)
    assert keep.drop(columns=["history"]).equals(cut.drop(columns=["history"]))


def test_attributes_are_asked_only_where_the_profile_states_them():
    profile = "A 24-year-old male technician living in the Southwest."
    attrs = {"age": "24", "gender": "M", "occupation": "technician", "zip": "85711", "region": "Southwest"}
    stated = stated_attributes(attrs, profile)
    assert stated == ["24", "technician", "Southwest"]  # "M" and the zip are not in the text
    assert attribute_match("a 24 year old Technician from the north", stated) == pytest.approx(2 / 3)
    assert attribute_match("a 240-year-old technicians", stated) == 0.0  # whole words only
    assert math.isnan(attribute_match("anything", []))
    assert stated_attributes({"interests": ["strings", "keyboards"], "brand": ""}, "likes strings") == ["strings"]


def test_evaluate_user_alignment_on_a_tiny_model():
    from align3gr_kit.model import build_backbone

    ds = tiny_dataset()
    items, users = random_scids(ds.n_items, "item", 1), random_scids(ds.n_users, "user", 2)
    corpus = ds.items.description.tolist() + ds.users.profile.tolist()
    cfg = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300)
    model, tok = build_backbone(cfg, corpus, items.vocabulary() + users.vocabulary(), seed=0)
    held = np.array([1, 3, 4])
    res = evaluate_user_alignment(model, tok, ds, users, held, max_length=96, beam_width=4, max_new_tokens=8,
                                  batch_size=2, precision="float32")
    assert res["users"] == 3 and res["chance_exact@1"] == pytest.approx(1 / 6)
    assert res["chance_hit@10"] == 1.0  # 6 users: any 10 SCIDs hold every user
    assert 0.0 <= res["exact@1"] <= res["hit@10"] <= 1.0
    assert len(res["examples"]) == 3 and all(e["top_scid"] in [users.string(u) for u in range(6)]
                                             for e in res["examples"])
    assert math.isnan(res["attribute_match"])  # tiny_dataset's users carry no attributes
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_user_alignment(model, tok, ds, users, np.array([1]))
