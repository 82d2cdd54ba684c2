"""SA-Init (TS-Rec eq. 9) against hand-computed rows; the level ablation; the mean-resizing init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align3gr_kit.config import ModelConfig
from align3gr_kit.model import build_backbone, sa_init, scid_keywords
from align3gr_kit.model.backbone import add_scid_tokens
from align3gr_kit.model.sa_init import mean_resizing_init
from align3gr_kit.prompts.keywords import token_keywords
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.unique import append_unique_level

# A word-piece vocabulary whose splits are known by construction: "guitar" = gui + ##tar.
VOCAB = {"[UNK]": 0, "[PAD]": 1, "gui": 2, "##tar": 3, "drum": 4, "amp": 5}


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def tiny_model(vocab: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        e = torch.zeros(vocab, 4)
        e[2] = torch.tensor([1.0, 0, 0, 0])  # gui
        e[3] = torch.tensor([0, 1.0, 0, 0])  # ##tar
        e[4] = torch.tensor([0, 0, 3.0, 0])  # drum
        e[5] = torch.tensor([0, 0, 0, 6.0])  # amp
        model.get_input_embeddings().weight.copy_(e)
        if not tied:
            model.get_output_embeddings().weight.copy_(2 * e + 1)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_sa_init_is_one_mean_over_all_sub_tokens_hand_computed(tied):
    tok = tiny_tokenizer()
    assert tok(" guitar", add_special_tokens=False)["input_ids"] == [2, 3]
    new_ids = add_scid_tokens(tok, ["<a_0>", "<a_1>", "<b_0>"])
    model = tiny_model(len(tok), tied)
    keywords = {"<a_0>": ["guitar", "drum"], "<a_1>": ["amp"], "<b_0>": ["zzz"]}  # zzz -> [UNK] only
    stats = sa_init(model, tok, keywords, new_ids)
    assert stats == {"sa_init": 2, "no_keywords": 1}
    w = model.get_input_embeddings().weight.detach()
    # Sub-tokens of <a_0>: gui, ##tar, drum -> (e2 + e3 + e4) / 3. A mean of per-keyword means would
    # give ((e2 + e3)/2 + e4)/2 = [0.25, 0.25, 1.5, 0] instead.
    assert torch.allclose(w[new_ids[0]], torch.tensor([1 / 3, 1 / 3, 1.0, 0.0]))
    assert torch.allclose(w[new_ids[1]], torch.tensor([0.0, 0.0, 0.0, 6.0]))
    assert torch.equal(w[new_ids[2]], torch.zeros(4))  # [UNK] is a special token: no keyword left, row kept
    out = model.get_output_embeddings().weight.detach()
    if tied:
        assert out.data_ptr() == w.data_ptr()
    else:
        # The untied head gets the same mean of its own rows: 2 * e + 1.
        assert torch.allclose(out[new_ids[0]], torch.tensor([5 / 3, 5 / 3, 3.0, 1.0]))


# three RQ-VAE levels, then the collision level the tokenizer always appends (all 0 here: no collisions)
ITEMS = ScidTable(append_unique_level(np.array([[0, 0, 0], [0, 1, 1], [1, 0, 0], [1, 1, 1]])), "item")
USERS = ScidTable(np.array([[0, 0], [1, 1]]), "user")
TITLES = ["vintage guitar maple", "guitar strings bronze", "drum kit maple", "snare drum steel"]
PROFILES = ["guitarist vintage gear", "drummer rock band"]
CORPUS = TITLES * 20 + ["a guitarist who likes vintage gear", "a drummer in a rock band"] * 20
TINY = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300)


def _dataset():
    from align3gr_kit.data.schema import RecDataset, make_interactions, make_items, make_users

    return RecDataset("t", make_items([{"raw_id": str(i), "title": t} for i, t in enumerate(TITLES)], "t"),
                      make_users([{"raw_id": f"u{i}", "profile": p} for i, p in enumerate(PROFILES)], "t"),
                      make_interactions([0], [0], [0]))


@pytest.mark.parametrize("levels", [0, 1, 2, 3, 4])
def test_sa_init_sets_only_item_tokens_of_the_chosen_semantic_levels(levels):
    """Issue 37: SA-Init sets item tokens of the RQ-VAE levels only (the first ``levels`` of them; 0 = all,
    more than there are = all); never the collision level's tokens (``<d_*>``) nor user tokens."""
    ds = _dataset()
    tokens = ITEMS.vocabulary() + USERS.vocabulary()
    kw = scid_keywords(ds, ITEMS, k=3, levels=levels)
    depth = 3 if levels in (0, 4) else levels
    # independent of token_groups: the level is the token's letter
    assert set(kw) == {t for t in tokens if not t.startswith("<u") and t[1] in "abc"[:depth]}
    # every token's keywords, the collision level and the users included: what the old default initialised
    all_kw = {**token_keywords(ITEMS, TITLES, 3), **token_keywords(USERS, PROFILES, 3)}
    assert set(kw) < set(all_kw) and any(all_kw[t] for t in all_kw if t not in kw)
    cfg = ModelConfig(**{**TINY.__dict__, "sa_init": True, "sa_init_levels": levels})
    model, tok = build_backbone(cfg, CORPUS, tokens, seed=0, keywords=kw)
    plain, _ = build_backbone(ModelConfig(**{**TINY.__dict__, "sa_init": False}), CORPUS, tokens, seed=0)
    w, w0 = model.get_input_embeddings().weight.detach(), plain.get_input_embeddings().weight.detach()
    for t in tokens:
        tid = tok.convert_tokens_to_ids(t)
        sub = [i for word in all_kw[t] for i in tok.backend_tokenizer.encode(" " + word, add_special_tokens=False).ids]
        reference = w[sub].mean(0)  # eq. 9 from the (unchanged) pretrained rows
        if t in kw:
            assert torch.allclose(w[tid], reference, atol=1e-6), t
        else:
            # user tokens, the collision level and levels beyond the knob keep the seeded init without SA-Init
            assert torch.equal(w[tid], w0[tid]) and not torch.allclose(w[tid], reference, atol=1e-3), t
    assert model.align3gr_init_stats["sa_init"] == len(kw)
    with pytest.raises(ValueError, match="semantic levels"):
        scid_keywords(ds, ITEMS, k=3, semantic_levels=5)


def test_mean_resizing_matches_transformers():
    """The ``new_token_init: mean_resizing`` rows against transformers' own resize on the same model."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = tiny_model(len(tok), tied=False)
    with torch.no_grad():
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            w.normal_()
    old = len(tok)
    reference = tiny_model(old, tied=False)
    reference.load_state_dict(model.state_dict())
    new_ids = add_scid_tokens(tok, [f"<a_{i}>" for i in range(8)])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    reference.resize_token_embeddings(len(tok), mean_resizing=True)
    mean_resizing_init(model, new_ids, seed=0)
    again = tiny_model(len(tok), tied=False)
    again.load_state_dict(model.state_dict())
    mean_resizing_init(again, new_ids, seed=0)
    for get in ("get_input_embeddings", "get_output_embeddings"):
        w, ref = getattr(model, get)().weight.detach(), getattr(reference, get)().weight.detach()
        assert torch.equal(w[:old], ref[:old])
        # Both draw from N(mean of old rows, 1e-9 * their covariance): equal up to that tiny spread.
        assert torch.allclose(w[new_ids], ref[new_ids], atol=1e-3)
        assert torch.allclose(w[new_ids].mean(0), w[:old].mean(0), atol=1e-3)
        assert torch.equal(w[new_ids], getattr(again, get)().weight.detach()[new_ids])  # seeded


def test_config_fields_validate():
    from align3gr_kit.config import ConfigError, RunConfig

    cfg = RunConfig.from_dict({"model": {"base": "smollm2-135m", "sa_init": True, "sa_init_levels": 2,
                                         "sa_init_extractor": "llm", "new_token_init": "mean_resizing"}})
    assert (cfg.model.sa_init_levels, cfg.model.sa_init_extractor, cfg.model.new_token_init) == (2, "llm", "mean_resizing")
    for bad, match in (({"sa_init_extractor": "llm"}, "instruct LLM"), ({"sa_init_levels": -1}, "sa_init_levels"),
                       ({"new_token_init": "zeros"}, "new_token_init"), ({"sa_init_extractor": "rake"}, "sa_init_extractor")):
        with pytest.raises(ConfigError, match=match):
            RunConfig.from_dict({"model": {"base": "tiny-llama", **bad}})
