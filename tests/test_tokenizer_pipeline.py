"""run_tokenize end to end on a small generated dataset: artifacts, schedule, determinism, ablations."""

import json

import numpy as np
import pytest

from align3gr_kit.config import RunConfig
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.data.synthetic import generate_synthetic
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.pipeline import run_tokenize, training_pairs

SMALL = {"sasrec": {"dim": 16, "layers": 1, "heads": 2, "epochs": 2}, "sc_dim": 16,
         "hidden_dim": 32, "code_dim": 8, "batch_size": 128, "phase1_max_epochs": 4, "phase1_patience": 2,
         "phase2_epochs": 3, "use_semantic": False}


@pytest.fixture(scope="module")
def data():
    ds = generate_synthetic(n_users=80, n_items=48, seed=0)
    return ds, leave_one_out(ds, 20)


def config(**tok):
    return RunConfig(seed=0).override({f"tokenizer.{k}": v for k, v in {**SMALL, **tok}.items()})


def test_artifacts_summary_and_schedule(data, tmp_path):
    ds, split = data
    s = run_tokenize(config(), ds, split, tmp_path, progress=False)
    for name in ("item_scids.json", "user_scids.json", "item_sc.npy", "user_sc.npy", "item_cf.npy", "user_cf.npy",
                 "tokenizer_history.json", "sasrec_history.json", "item_codebooks.npy", "user_codebooks.npy",
                 "item_codes_raw.npy", "user_codes_raw.npy", "tokenizer.pt", "summary.json"):
        assert (tmp_path / name).exists(), name
    items, users = ScidTable.load(tmp_path / "item_scids.json"), ScidTable.load(tmp_path / "user_scids.json")
    assert items.kind == "item" and users.kind == "user"
    assert items.codes.shape == (48, 4) and users.codes.shape == (80, 4)  # 3 RQ levels + the unique level
    assert s["item_collisions"] == 0 == items.collisions() and s["user_collisions"] == 0 == users.collisions()
    raw = np.load(tmp_path / "item_codes_raw.npy")
    np.testing.assert_array_equal(items.codes[:, :3], raw)
    assert s["item_collisions_before"] == len(raw) - len(np.unique(raw, axis=0))
    assert s["item_codebook_size"] == 8 and np.load(tmp_path / "item_codebooks.npy").shape == (3, 8, 8)
    assert len(s["item_utilisation"]) == 3 and all(0 < u <= 1 for u in s["item_utilisation"])
    assert all(1 <= p <= 8 for p in s["item_perplexity"])
    sc = np.load(tmp_path / "item_sc.npy")
    assert sc.shape == (48, 16)
    np.testing.assert_allclose(np.linalg.norm(sc, axis=1), 1, atol=1e-5)
    assert 0.0 <= s["u2i_auc"] <= 1.0
    # The CF encoder is the SASRec baseline: same model, same scores as `baseline sasrec`.
    from align3gr_kit.baselines import run_sasrec_baseline

    base = run_sasrec_baseline(config(), ds, split, progress=False)
    assert s["sasrec"] == {"valid": base["valid"], "test": base["test"]}
    # each user's rank is kept (row order of the split) so reports can score SASRec on a user subset
    from align3gr_kit.metrics import metrics_from_ranks
    from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts

    saved = TokenizeArtifacts.load(tmp_path)

    for name in ("valid", "test"):
        assert len(saved.sasrec_ranks[name]) == len(split.samples(name))
        assert metrics_from_ranks(saved.sasrec_ranks[name]) == base[name]

    hist = json.loads((tmp_path / "tokenizer_history.json").read_text())
    phase1 = [h for h in hist if h["phase"] == 1]
    phase2 = [h for h in hist if h["phase"] == 2]
    assert s["phase_switch_epoch"] == len(phase1) + 1 == phase2[0]["epoch"] and len(phase2) == 3
    assert 1 <= len(phase1) <= 4
    assert all(h["alpha"] == 1 and h["gamma"] == 0 and h["item_rq"] is None for h in phase1)
    assert all(h["alpha"] == 0.1 and h["gamma"] == 1 and h["item_rq"] > 0 and h["u2i"] > 0 for h in phase2)
    if len(phase1) < 4:  # stopped early: the last `patience` epochs did not beat the best before them
        aucs = [h["auc"] for h in phase1]
        assert max(aucs[-2:]) <= max(aucs[:-2]) + 1e-4


def test_same_seed_same_scids(data, tmp_path):
    ds, split = data
    run_tokenize(config(), ds, split, tmp_path / "a", progress=False)
    run_tokenize(config(), ds, split, tmp_path / "b", progress=False)
    for name in ("item_scids.json", "user_scids.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_ablation_item_only_and_no_alignment(data, tmp_path):
    ds, split = data
    s = run_tokenize(config(dual=False), ds, split, tmp_path / "item_only", progress=False)
    assert not (tmp_path / "item_only" / "user_scids.json").exists()
    assert s["user_collisions"] is None and s["user_utilisation"] is None and s["item_collisions"] == 0
    s = run_tokenize(config(u2i_align=False), ds, split, tmp_path / "no_u2i", progress=False)
    hist = json.loads((tmp_path / "no_u2i" / "tokenizer_history.json").read_text())
    assert s["phase_switch_epoch"] == 1 and all(h["phase"] == 2 and h["alpha"] == 0 and h["u2i"] is None for h in hist)
    assert np.load(tmp_path / "no_u2i" / "item_sc.npy").shape == (48, 16)  # identity SC: the CF feature itself
    assert s["item_collisions"] == 0 and s["user_collisions"] == 0


def test_ablation_without_cf_uses_text_only(data, tmp_path, request):
    ds, split = data
    cache = request.config.cache.mkdir("align3gr-minilm")  # .pytest_cache: text embeddings reused across runs
    s = run_tokenize(config(use_cf=False, use_semantic=True), ds, split, tmp_path / "run", cache_dir=cache,
                     progress=False)
    assert (tmp_path / "run" / "item_semantic.npy").exists() and not (tmp_path / "run" / "item_cf.npy").exists()
    assert np.load(tmp_path / "run" / "item_semantic.npy").shape == (48, 384)
    assert s["item_collisions"] == 0
    with pytest.raises(ValueError, match="at least one feature source"):
        run_tokenize(config(use_cf=False, use_semantic=False), ds, split, tmp_path / "none", progress=False)


def test_given_cf_embeddings_warn_and_feed_users_by_mean(data, tmp_path):
    import torch

    ds, split = data
    emb = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    torch.save(emb, tmp_path / "cf.pt")
    with pytest.warns(UserWarning, match="leak"):
        run_tokenize(config(cf_embeddings=str(tmp_path / "cf.pt")), ds, split, tmp_path / "run", progress=False)
    user_cf = np.load(tmp_path / "run" / "user_cf.npy")
    np.testing.assert_allclose(user_cf[3], emb.numpy()[split.train_sequences[3]].mean(0), rtol=1e-5)


def test_training_pairs_come_from_training_sequences(data):
    ds, split = data
    pairs = training_pairs(split)
    assert len(pairs) == sum(len(s) for s in split.train_sequences.values())
    held = set(zip(split.test.user_id, split.test.target)) | set(zip(split.valid.user_id, split.valid.target))
    seqs = ds.sequences()
    for u, i in held:  # a held-out pair may only reappear if the user bought that item earlier too
        assert ((pairs[:, 0] == u) & (pairs[:, 1] == i)).sum() == (seqs[u][:-2] == i).sum()
