"""The tiny-llama backbone: BPE, SCID tokens, new-row init (normal, SA-Init), LoRA, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align3gr_kit.config import ModelConfig
from align3gr_kit.model import (
    apply_lora,
    build_backbone,
    build_tokenizer,
    encode_prompts,
    encode_sft_batch,
    left_pad,
    load_model,
    save_model,
    scid_keywords,
    trainable_parameters,
)
from align3gr_kit.prompts.keywords import TfidfKeywords, token_groups
from align3gr_kit.scid import ScidTable

CORPUS = [
    "A vintage electric guitar with maple neck and alnico pickups.",
    "A weighted digital piano with hammer action keys.",
    "A maple-shell drum kit with chrome hardware and cymbals.",
    "User profile: a 25-34 year old guitarist who likes vintage gear.",
] * 20
TEXTS = ["vintage guitar maple pickups", "guitar strings bridge", "digital piano keys", "drum kit cymbals snare",
         "piano synthesizer keys", "drum snare sticks"]
CFG = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300, sa_init=False)


@pytest.fixture(scope="module")
def tables():
    items = ScidTable(np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [2, 0, 0], [1, 1, 0], [2, 1, 0]]), "item")
    users = ScidTable(np.array([[0, 0], [1, 0]]), "user")
    return items, users


def scid_tokens(items, users):
    return items.vocabulary() + users.vocabulary()


def test_scid_tokens_are_whole_tokens(tables):
    items, users = tables
    tok = build_tokenizer(CFG, CORPUS, scid_tokens(items, users))
    text = f"User {users.string(1)} bought {items.string(4)}, {items.string(0)}.\n"
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    expected = users.tokens(1) + items.tokens(4) + items.tokens(0)
    assert [p for p in pieces if p.startswith("<") and p.endswith(">") and "_" in p] == expected
    assert not any("<a_" in p and p not in items.vocabulary() for p in pieces)
    # SCID strings are stripped from the BPE's training text: no merge spells a piece of them.
    assert not any(("a_" in v or "_1>" in v) for v in tok.backend_tokenizer.get_vocab(with_added_tokens=False))
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_normal_init_is_seeded_and_scaled(tables):
    items, users = tables
    toks = scid_tokens(items, users)
    m1, tok = build_backbone(CFG, CORPUS, toks, seed=0)
    m2, _ = build_backbone(CFG, CORPUS, toks, seed=0, tokenizer=build_tokenizer(CFG, CORPUS, toks))
    m3, _ = build_backbone(CFG, CORPUS, toks, seed=1, tokenizer=build_tokenizer(CFG, CORPUS, toks))
    ids = tok.convert_tokens_to_ids(toks)
    assert m1.get_input_embeddings().weight.shape[0] == len(tok)
    for get in ("get_input_embeddings", "get_output_embeddings"):
        w1, w2, w3 = (getattr(m, get)().weight.detach() for m in (m1, m2, m3))
        assert torch.equal(w1[ids], w2[ids]) and not torch.allclose(w1[ids], w3[ids])
        old_std = w1[: min(ids)].std()
        assert 0.6 < float(w1[ids].std() / old_std) < 1.5
        # Distinct rows (mean_resizing would make them nearly identical).
        assert float(torch.pdist(w1[ids]).min()) > 0.1 * float(old_std)


def test_tfidf_keywords_hand_example():
    kws = TfidfKeywords().extract(["guitar guitar amp", "drum drum stick", ""], k=1)
    assert kws == [["guitar"], ["drum"], []]


def test_sa_init_is_the_mean_of_keyword_embeddings(tables):
    items, users = tables
    from align3gr_kit.data.schema import RecDataset, make_interactions, make_items, make_users

    ds = RecDataset("t", make_items([{"raw_id": str(i), "title": t} for i, t in enumerate(TEXTS)], "t"),
                    make_users([{"raw_id": "u0", "profile": "guitarist vintage"}, {"raw_id": "u1", "profile": "drummer"}], "t"),
                    make_interactions([0], [0], [0]))
    kw = scid_keywords(ds, items, k=3)
    # Token <a_0> is carried by items 0 and 1 (both guitar texts): "guitar" is its top keyword.
    assert [list(r) for r in token_groups(items).rows][:1] == [[0, 1]] and kw["<a_0>"][0] == "guitar"
    cfg = ModelConfig(**{**CFG.__dict__, "sa_init": True})
    model, tok = build_backbone(cfg, CORPUS + TEXTS, scid_tokens(items, users), seed=0, keywords=kw)
    assert model.align3gr_init_stats["sa_init"] == len(kw)
    for get in ("get_input_embeddings", "get_output_embeddings"):
        w = getattr(model, get)().weight.detach()
        for token, words in kw.items():
            # Independent path: the raw `tokenizers` object; eq. 9 = one mean over all sub-tokens.
            sub = [i for word in words for i in tok.backend_tokenizer.encode(" " + word, add_special_tokens=False).ids]
            expected = w[sub].mean(0)
            assert torch.allclose(w[tok.convert_tokens_to_ids(token)], expected, atol=1e-6), token


def test_sa_init_requires_keywords(tables):
    items, users = tables
    with pytest.raises(ValueError, match="keywords"):
        build_backbone(ModelConfig(**{**CFG.__dict__, "sa_init": True}), CORPUS, scid_tokens(items, users), seed=0)


def test_lora_trainable_count_includes_embeddings(tables):
    items, users = tables
    model, tok = build_backbone(CFG, CORPUS, scid_tokens(items, users), seed=0)
    V, H, I, r = len(tok), CFG.hidden_size, 4 * CFG.hidden_size, 4
    peft_model = apply_lora(model, ModelConfig(**{**CFG.__dict__, "lora": True, "lora_r": r}))
    counts = trainable_parameters(peft_model)
    # Hand count: LoRA A (r x in) and B (out x r) on q, k, v, o (H->H), gate, up (H->I), down (I->H),
    # plus one trainable delta row per SCID token in the input embedding and in the (untied) lm_head;
    # the V - n old rows stay frozen.
    lora = r * (4 * (H + H) + 2 * (H + I) + (I + H))
    n = len(set(scid_tokens(items, users)))
    assert 0 < n < V
    assert counts["trainable"] == lora + 2 * n * H
    assert counts["trainable"] == peft_model.get_nb_trainable_parameters()[0]
    # Without trainable SCID rows (the pitfall) the new tokens would keep their initial rows.
    from peft import LoraConfig, get_peft_model

    plain, _ = build_backbone(CFG, CORPUS, scid_tokens(items, users), seed=0)
    plain = get_peft_model(plain, LoraConfig(r=r, target_modules="all-linear", task_type="CAUSAL_LM"))
    from align3gr_kit.train.sft import embeddings_trainable

    assert embeddings_trainable(peft_model) and not embeddings_trainable(plain)


def test_encoding_is_shared_and_left_padded(tables):
    items, users = tables
    tok = build_tokenizer(CFG, CORPUS, scid_tokens(items, users))
    prompts = ["User <ua_0> likes <a_0><b_0><c_0>.\n", "Hi\n"]
    enc = encode_sft_batch(tok, prompts, [items.string(1), "guitar"], max_length=64)
    p_ids = encode_prompts(tok, prompts)
    for ids, mask, p in zip(enc["input_ids"], enc["completion_mask"], p_ids):
        assert ids[: len(p)] == p and p[0] == tok.bos_token_id  # training starts with the inference prompt
        assert ids[-1] == tok.eos_token_id and mask == [0] * len(p) + [1] * (len(ids) - len(p))
    assert tok.convert_ids_to_tokens(enc["input_ids"][0][len(p_ids[0]):-1]) == items.tokens(1)
    # A prompt longer than the budget keeps BOS and its most recent tokens; the completion stays whole.
    long = encode_sft_batch(tok, ["word " * 100 + "end\n"], [items.string(2)], max_length=20)["input_ids"][0]
    assert len(long) == 20 and long[0] == tok.bos_token_id and tok.convert_ids_to_tokens(long[-4:-1]) == items.tokens(2)
    ids, mask = left_pad(p_ids, tok.pad_token_id)
    assert ids.shape == mask.shape and bool(mask[:, -1].all()) and int(mask[1].sum()) == len(p_ids[1])


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_load_round_trip(tables, tmp_path, lora):
    items, users = tables
    model, tok = build_backbone(CFG, CORPUS, scid_tokens(items, users), seed=0)
    if lora:
        model = apply_lora(model, ModelConfig(**{**CFG.__dict__, "lora": True}))
        with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    model.eval()
    x = torch.as_tensor([encode_prompts(tok, [f"hi {items.string(3)}\n"])[0]])
    before = model(input_ids=x).logits
    save_model(model, tok, tmp_path / "m", items, users)
    loaded, tok2, items2, users2 = load_model(tmp_path / "m")
    assert not hasattr(loaded, "peft_config")  # a merged, plain model
    assert torch.allclose(loaded.eval()(input_ids=x).logits, before, atol=1e-4)
    assert len(tok2) == len(tok) and np.array_equal(items2.codes, items.codes) and np.array_equal(users2.codes, users.codes)


def test_chat_template_frames_prompts_and_cuts_only_the_text(tables):
    """With a chat template, prompts are one user turn + the generation prompt; cutting a long prompt
    drops its oldest *text* tokens and keeps the template's head and the assistant header whole."""
    from align3gr_kit.model import fit_prompt, prompt_frame

    assert fit_prompt([1, 2, 3, 4, 5, 6, 7, 8], 2, 2, 6) == [1, 2, 5, 6, 7, 8]  # hand example
    items, users = tables
    tok = build_tokenizer(CFG, CORPUS, scid_tokens(items, users))
    plain_head, plain_tail = prompt_frame(tok)
    assert (plain_head, plain_tail) == ([tok.bos_token_id], [])  # tiny-llama: the plain format
    tok.chat_template = ("{% for m in messages %}<s>[{{ m['role'] }}]: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>[assistant]: {% endif %}")
    head, tail = prompt_frame(tok)
    prompt = f"User {users.string(1)} bought {items.string(4)}. Next?"
    ids = encode_prompts(tok, [prompt])[0]
    assert tok.decode(ids) == tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
    assert ids[: len(head)] == head and ids[len(ids) - len(tail):] == tail and len(tail) > 0
    long_prompt = "word " * 100 + "LAST"
    cut = encode_prompts(tok, [long_prompt], max_length=len(head) + len(tail) + 3)[0]
    assert cut[: len(head)] == head and cut[len(cut) - len(tail):] == tail
    assert cut[len(head): len(cut) - len(tail)] == tok(long_prompt, add_special_tokens=False)["input_ids"][-3:]
    # SFT rows start with exactly the inference prompt; the completion (+ EOS) follows unchanged
    enc = encode_sft_batch(tok, [long_prompt], [items.string(2)], max_length=len(head) + len(tail) + 8)
    row, mask = enc["input_ids"][0], enc["completion_mask"][0]
    n_prompt = mask.index(1)
    assert row[:len(head)] == head and row[n_prompt - len(tail): n_prompt] == tail
    assert tok.convert_ids_to_tokens(row[n_prompt:-1]) == items.tokens(2) and row[-1] == tok.eos_token_id


def hub_folder(tmp_path, extra_rows: int = 0):
    """A saved causal LM that knows no SCID token, loaded through the hub path (``model.base`` = a folder)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(CFG, CORPUS, [])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok) + extra_rows, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "hub")  # a bf16 checkpoint, as hub models often are
    tok.save_pretrained(tmp_path / "hub")
    return tmp_path / "hub", len(tok) + extra_rows


def hub_config(folder, dtype: str = "auto") -> ModelConfig:
    return ModelConfig(**{**CFG.__dict__, "base": str(folder), "dtype": dtype})


@pytest.mark.parametrize("cuda, multiple", [(False, 8), (True, 64)])
def test_weights_load_fp32_and_resized_rows_are_padded(tables, tmp_path, monkeypatch, cuda, multiple):
    """Weights are fp32 whatever model.dtype says (the old rule loaded bf16 under auto on an Ampere GPU);
    the grown embedding matrices are padded to a multiple of 8 (CPU) or 64 (GPU)."""
    items, users = tables
    folder, base_rows = hub_folder(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda)
    for dtype in ("auto", "bf16", "fp16"):
        cfg = hub_config(folder, dtype)
        model, tok = build_backbone(cfg, CORPUS, scid_tokens(items, users), seed=0)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, dtype
        rows = {m.weight.shape[0] for m in (model.get_input_embeddings(), model.get_output_embeddings())}
        assert rows == {-(-len(tok) // multiple) * multiple} and model.config.vocab_size in rows
        assert len(tok) > base_rows and rows != {len(tok)}  # grown, and by padding beyond the tokenizer
    save_model(model, tok, tmp_path / "saved", items, users)
    loaded = load_model(tmp_path / "saved", "bf16")[0]
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_resize_only_grows(tables, tmp_path):
    items, users = tables
    n_scid = len(set(scid_tokens(items, users)))
    folder, rows = hub_folder(tmp_path, extra_rows=n_scid + 3)  # a hub matrix already larger (Qwen-style)
    model, tok = build_backbone(hub_config(folder), CORPUS, scid_tokens(items, users), 0)
    assert len(tok) < rows and model.get_input_embeddings().weight.shape[0] == rows


def test_padding_rows_are_never_decoded(tables, tmp_path):
    """Even when the padding rows past len(tokenizer) take nearly all the probability mass, constrained
    decoding returns catalogue items only: the trie allows SCID ids and nothing else."""
    from align3gr_kit.decoding import constrained_beam_search, trie_from_scids

    items, users = tables
    folder, _ = hub_folder(tmp_path)
    model, tok = build_backbone(hub_config(folder), CORPUS, scid_tokens(items, users), 0)
    V = len(tok)
    assert model.get_output_embeddings().weight.shape[0] > V
    padding = torch.arange(V, model.get_output_embeddings().weight.shape[0])
    model.get_output_embeddings().register_forward_hook(lambda m, i, out: out.index_fill(-1, padding, 1e4))
    ids, mask = left_pad(encode_prompts(tok, [f"User {users.string(0)} bought {items.string(1)}. Next:", "Hi"]),
                         tok.pad_token_id)
    with torch.no_grad():
        assert (model.eval()(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1) >= V).all()  # the hook bites
    trie = trie_from_scids(items, tok)
    assert set(trie.paths().unique().tolist()) <= set(tok.convert_tokens_to_ids(items.vocabulary()))
    res = constrained_beam_search(model, ids, mask, trie, beam_width=4)
    assert ((res.items >= 0) & (res.items < items.n)).all()
    assert torch.isfinite(res.scores).all() and (res.scores < -1e3).all()  # the padding held the mass, unused
