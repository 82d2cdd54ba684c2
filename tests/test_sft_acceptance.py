"""Acceptance: multi-task SFT beats the most-popular baseline on the generated default data.

The SCIDs here come from the ground truth (category, then the index within the category split in
two levels) so that the test isolates the behaviour level and stays within about two minutes on
two cores; the learned tokenizer is exercised by its own tests and by the pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align3gr_kit.baselines.popularity import popularity_counts, popularity_ranks
from align3gr_kit.config import RunConfig
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.data.synthetic import generate_synthetic
from align3gr_kit.evaluate import evaluate
from align3gr_kit.metrics import metrics_from_ranks
from align3gr_kit.model.backbone import build_tokenizer
from align3gr_kit.prompts import build_sft_dataset, find_leaks
from align3gr_kit.scid import ScidTable
from align3gr_kit.train.sft import build_sft_model, scid_vocabulary, tokenizer_corpus, train_sft


def ground_truth_scids(ds) -> tuple[ScidTable, ScidTable]:
    cats = {c: k for k, c in enumerate(sorted(ds.items.category.unique()))}
    cat = ds.items.category.map(cats).to_numpy()
    within = ds.items.groupby("category").cumcount().to_numpy()
    items = ScidTable(np.stack([cat, within // 8, within % 8], 1), "item")
    u = np.arange(ds.n_users)
    users = ScidTable(np.stack([u % 8, u // 8 % 8, u // 64], 1), "user")
    return items, users


@pytest.mark.slow
def test_sft_beats_popularity_on_default_data(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is faster and steadier
    try:
        ds = generate_synthetic(1000, 500, seed=0)
        split = leave_one_out(ds, 20)
        items, users = ground_truth_scids(ds)
        assert items.collisions() == 0
        cfg = RunConfig().override({
            "seed": 0, "prompts.tasks": ["A", "B1", "C2"], "prompts.max_per_task": 3000, "model.sa_init": False,
            "sft.max_steps": 200, "sft.batch_size": 32, "sft.lr": 2e-3, "sft.logging_steps": 50,
        })
        sft = build_sft_dataset(ds, split, items, users, cfg.prompts, cfg.seed, progress=False)
        assert find_leaks(sft, split, items) == []
        tok = build_tokenizer(cfg.model, tokenizer_corpus(ds, sft, cfg.seed), scid_vocabulary(items, users))
        model, tok = build_sft_model(cfg, ds, items, users, tok)
        res = train_sft(cfg, model, tok, sft, tmp_path)
        got = evaluate(res["model"], tok, items, users, split.test, cfg.decode, True, max_length=cfg.sft.max_length,
                       progress=False)
    finally:
        torch.set_num_threads(threads)
    pop = metrics_from_ranks(popularity_ranks(popularity_counts(split, ds.n_items), split.test.target.to_numpy()))
    assert got["users"] == ds.n_users and got["invalid"] == 0
    assert got["recall@10"] > pop["recall@10"] + 0.03, (got, pop)
    assert got["ndcg@10"] > pop["ndcg@10"], (got, pop)
