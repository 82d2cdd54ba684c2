"""Evaluation: every user counted, only catalogue items, rankings equal to exhaustive scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from align3gr_kit.config import DecodeConfig, ModelConfig, RunConfig
from align3gr_kit.evaluate import count_invalid, evaluate, evaluation_prompts, recommend, run_evaluate
from align3gr_kit.metrics import rank_metrics
from align3gr_kit.model import build_backbone, encode_prompts, save_model
from align3gr_kit.scid import ScidTable

ITEMS = ScidTable(np.array([[i // 4, i % 4] for i in range(12)]), "item")  # 3 x 4 prefixes: width 12 is exhaustive
USERS = ScidTable(np.array([[u % 3, u] for u in range(7)]), "user")
CFG = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300, sa_init=False)


@pytest.fixture(scope="module")
def model_and_tok():
    corpus = ["User has interacted with the following items in order, which item will interact with next?"] * 30
    model, tok = build_backbone(CFG, corpus, ITEMS.vocabulary() + USERS.vocabulary(), seed=0)
    return model.eval(), tok


def samples(n: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"user_id": np.arange(n), "history": [list(rng.choice(12, size=1 + u % 4, replace=False)) for u in range(n)],
                         "target": rng.integers(0, 12, n)})


@torch.no_grad()
def exhaustive_scores(model, tok, prompts) -> np.ndarray:
    """Teacher forcing: log p(SCID of item | prompt) for every (prompt, item), one sequence each."""
    out = np.zeros((len(prompts), ITEMS.n))
    for r, ids in enumerate(encode_prompts(tok, prompts)):
        for i in range(ITEMS.n):
            scid = tok.convert_tokens_to_ids(ITEMS.tokens(i))
            x = torch.as_tensor([ids + scid])
            logp = F.log_softmax(model(input_ids=x).logits[0].float(), -1)
            out[r, i] = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(scid))
    return out


def test_metrics_equal_exhaustive_ranking(model_and_tok):
    model, tok = model_and_tok
    data = samples()
    decode = DecodeConfig(beam_width=12, topk=[5, 10], batch_size=3)
    got = evaluate(model, tok, ITEMS, USERS, data, decode, user_scid_in_prompt=True, progress=False, keep_ranks=True)
    scores = exhaustive_scores(model, tok, evaluation_prompts(data, ITEMS, USERS, True))
    ranked = np.argsort(-scores, axis=1, kind="stable")
    expected = rank_metrics(ranked, data.target.to_numpy(), ks=(5, 10))
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    assert got["users"] == len(data) and got["invalid"] == 0 and got["seconds"] >= 0
    # each user's kept target rank is where the exhaustive ranking puts the target (-1 beyond the top 10)
    exhaustive = [int(np.flatnonzero(r == t)[0]) for r, t in zip(ranked, data.target.to_numpy())]
    assert got["target_ranks"] == [r if r < 10 else -1 for r in exhaustive]
    items, beam_scores = recommend(model, tok, ITEMS, USERS, data, decode, True, progress=False)
    assert np.array_equal(items[:, :10], ranked[:, :10])  # batches of mixed lengths come back in row order
    assert np.allclose(beam_scores[:, :10], np.take_along_axis(scores, ranked[:, :10], 1), atol=1e-4)


def test_every_user_counted_and_cap(model_and_tok):
    model, tok = model_and_tok
    data = samples(7)
    full = evaluate(model, tok, ITEMS, USERS, data, DecodeConfig(beam_width=10, batch_size=4), True, progress=False)
    assert full["users"] == 7  # 7 users in batches of 4: the last short batch is not dropped
    capped = evaluate(model, tok, ITEMS, USERS, data, DecodeConfig(beam_width=10, max_eval_users=3), True, progress=False)
    assert capped["users"] == 3
    with pytest.raises(ValueError, match="beam_width"):
        evaluate(model, tok, ITEMS, USERS, data, DecodeConfig(beam_width=5, topk=[5, 10]), True, progress=False)


def test_user_switch_changes_evaluation_prompts():
    data = samples(3)
    with_user = evaluation_prompts(data, ITEMS, USERS, True)
    without = evaluation_prompts(data, ITEMS, USERS, False)
    assert all(USERS.string(u) in p for u, p in zip(data.user_id, with_user))
    assert not any("<u" in p for p in without)


def test_count_invalid_hand_examples():
    items = np.array([[0, 1, 2], [3, 3, -1], [5, 99, -1]])
    # row 1: a repeat (1) and an empty slot (1); row 2: an out-of-catalogue id (1) and an empty slot (1)
    assert count_invalid(items, n_items=10, k=3) == 4
    assert count_invalid(items[:1], n_items=10, k=3) == 0
    assert count_invalid(np.array([[0, 1, -1]]), n_items=2, k=3) == 0  # catalogue smaller than K: padding is fine


def test_run_evaluate_reads_the_run(model_and_tok, tmp_path):
    from align3gr_kit.data.split import Split

    model, tok = model_and_tok
    cfg = RunConfig.from_dict({"run_name": "ev", "runs_dir": str(tmp_path), "decode": {"beam_width": 10}})
    from align3gr_kit.stages.contract import StageRun

    st = StageRun(cfg, "04_sft")
    save_model(model, tok, st.dir / "model", ITEMS, USERS)
    st.finish()
    data = samples()
    empty = pd.DataFrame({"user_id": pd.Series([], dtype="int64"), "history": [], "target": pd.Series([], dtype="int64")})
    st = StageRun(cfg, "00_data")
    Split(empty, data, data, {}, 20).save(st.dir / "split")  # the split alone: evaluation reads nothing else
    st.finish()
    out = run_evaluate(cfg, "test")
    direct = evaluate(model, tok, ITEMS, USERS, data, cfg.decode, True, max_length=cfg.sft.max_length, progress=False)
    assert out["split"] == "test" and out["users"] == 7
    for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
        assert out[k] == pytest.approx(direct[k])
