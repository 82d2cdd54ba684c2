"""What users like in a model's top-K: evaluate_liked recommends like evaluate() and grades the lists."""

from __future__ import annotations

import numpy as np
import pandas as pd

from align3gr_kit.config import DecodeConfig, ModelConfig
from align3gr_kit.evaluate import evaluate_liked, liked_share, recommend
from align3gr_kit.feedback import GroundTruthOracle
from align3gr_kit.model import build_backbone
from align3gr_kit.scid import ScidTable

ITEMS = ScidTable(np.array([[i // 4, i % 4] for i in range(12)]), "item")
USERS = ScidTable(np.array([[u % 3, u] for u in range(5)]), "user")
CFG = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300, sa_init=False)


def test_evaluate_liked_grades_the_models_own_top_k():
    corpus = ["User has interacted with the following items in order, which item will interact with next?"] * 30
    model, tok = build_backbone(CFG, corpus, ITEMS.vocabulary() + USERS.vocabulary(), seed=0)
    model.eval()
    samples = pd.DataFrame({"user_id": np.arange(5), "history": [[1, 2], [3], [4, 5, 6], [0], [7, 8]],
                            "target": [3, 4, 5, 6, 7]})
    table = np.random.default_rng(0).uniform(0.5, 5.5, size=(5, 12))
    truth = GroundTruthOracle.from_matrix(table)
    decode = DecodeConfig(beam_width=12, batch_size=2)
    got = evaluate_liked(model, tok, ITEMS, USERS, samples, decode, True, truth, k=10, progress=False)
    items, _ = recommend(model, tok, ITEMS, USERS, samples, decode, True, k=10, progress=False)
    assert got == liked_share(samples.user_id, items, truth, k=10) and got["users"] == 5
    # by hand from the lists: liked = the truth's noise-free rating rounds to 4 or 5
    top = table[np.arange(5)[:, None], items[:, :10]]
    assert got["liked_share@10"] == round(float((np.clip(top, 1, 5) >= 3.5).mean()), 4)
    small = evaluate_liked(model, tok, ITEMS, USERS, samples, DecodeConfig(beam_width=6, max_eval_users=2), True,
                           truth, progress=False)
    assert small["users"] == 2 and "liked_share@6" in small
