"""Constrained beam search vs generate(prefix_allowed_tokens_fn), exhaustive teacher forcing and hand values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align3gr_kit.decoding import (
    ItemTrie,
    constrained_beam_search,
    generate_reference,
    score_items,
)

TEXT_VOCAB = 60  # ids 0..59 are "text"; SCID tokens come after


def catalogue(n: int, sizes: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``[n, L]`` unique SCID token-id rows with shared prefixes, ids from ``TEXT_VOCAB`` on."""
    rng = np.random.default_rng(seed)
    codes = np.unique(np.stack([rng.integers(0, s, 4 * n) for s in sizes], 1), axis=0)
    codes = codes[rng.permutation(len(codes))[:n]]
    starts = TEXT_VOCAB + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return torch.as_tensor(codes + starts)


def tiny_llama(vocab: int, seed: int = 0, scale: float = 20.0) -> LlamaForCausalLM:
    """A 2-layer Llama (GQA: 4 query heads, 2 KV heads); lm_head scaled so item scores are well spread."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model.eval()


def prompts(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random text prompts: ``input_ids``/``attention_mask`` ``[B, max(lengths)]``."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, T - n :] = torch.randint(1, TEXT_VOCAB, (n,), generator=g)
        mask[b, T - n :] = 1
    return ids, mask


@pytest.fixture(scope="module")
def setup():
    rows = catalogue(120, (5, 6, 8))
    trie = ItemTrie(rows)
    model = tiny_llama(int(rows.max()) + 1)
    ids, mask = prompts([12, 7, 16, 9])
    return model, trie, ids, mask


@pytest.mark.parametrize("mode", ["tree-sdpa", "expanded", "tree-eager"])
def test_matches_generate_reference(setup, mode):
    model, trie, ids, mask = setup
    if mode == "tree-eager":
        model.set_attn_implementation("eager")
    try:
        fast = constrained_beam_search(model, ids, mask, trie, beam_width=20, tree_attention=mode != "expanded")
        ref = generate_reference(model, ids, mask, trie, beam_width=20)
    finally:
        model.set_attn_implementation("sdpa")
    assert fast.items.shape == ref.items.shape == (4, 20)
    assert torch.equal(fast.items, ref.items)
    torch.testing.assert_close(fast.scores, ref.scores, atol=1e-4, rtol=0)
    assert (fast.scores[:, :-1] >= fast.scores[:, 1:]).all()


def test_wide_beam_equals_exhaustive_scoring(setup):
    model, trie, ids, mask = setup
    exact = score_items(model, ids, mask, trie)  # [B, n_items] by teacher forcing
    res = constrained_beam_search(model, ids, mask, trie, beam_width=trie.n_items)
    want_scores, want_items = exact.sort(dim=1, descending=True)
    assert res.items.shape == (4, trie.n_items)
    assert torch.equal(res.items, want_items)
    torch.testing.assert_close(res.scores, want_scores, atol=1e-4, rtol=0)
    # narrower beams return a prefix-consistent subset; the best item is always found here
    top5 = constrained_beam_search(model, ids, mask, trie, beam_width=5)
    assert torch.equal(top5.items[:, 0], want_items[:, 0])


def test_score_items_matches_manual_chain_rule(setup):
    """Independent check of the teacher-forcing reference: unpadded prompt, one forward per token."""
    model, trie, ids, mask = setup
    b, i = 1, 17
    prompt = ids[b, mask[b].bool()]
    total, seq = 0.0, prompt.tolist()
    with torch.no_grad():
        for tok in trie.item_token_ids[i].tolist():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            total += float(torch.log_softmax(logits, -1)[tok])
            seq.append(tok)
    assert score_items(model, ids, mask, trie)[b, i].item() == pytest.approx(total, abs=1e-4)


def test_prefers_the_item_the_model_is_forced_to(setup):
    """lm_head = bias only, +8 on item k's tokens: item k first with a hand-computable score."""
    _, trie, ids, mask = setup
    vocab = int(trie.item_token_ids.max()) + 1
    model = tiny_llama(vocab)
    k = 42
    head = torch.nn.Linear(32, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[trie.item_token_ids[k]] = 8.0
    model.lm_head = head
    res = constrained_beam_search(model, ids, mask, trie, beam_width=10)
    assert (res.items[:, 0] == k).all()
    L = trie.levels  # the L boosted tokens are boosted at every step: softmax mass L*e^8 + (V-L)
    hand = L * (8.0 - math.log(L * math.exp(8.0) + vocab - L))
    torch.testing.assert_close(res.scores[:, 0], torch.full((4,), hand), atol=1e-5, rtol=0)


def test_per_user_preferences_after_finetuning():
    """Two users, two target items, a few Adam steps: each user's top item is its own target."""
    rows = catalogue(60, (4, 5, 6), seed=3)
    trie = ItemTrie(rows)
    model = tiny_llama(int(rows.max()) + 1, scale=1.0).train()
    ids, mask = prompts([10, 6], seed=5)
    targets = [7, 31]
    seq = torch.cat([ids, rows[targets]], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(rows[targets])], dim=1)
    labels = seq.masked_fill(full_mask == 0, -100)
    labels[:, : ids.shape[1]] = -100
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(input_ids=seq, attention_mask=full_mask, position_ids=pos, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = constrained_beam_search(model, ids, mask, trie, beam_width=20)
    assert res.items[:, 0].tolist() == targets
    assert model.training  # the caller's mode is restored


def test_left_padding_invariance(setup):
    model, trie, ids, mask = setup
    batch = constrained_beam_search(model, ids, mask, trie, beam_width=20)
    for b in range(ids.shape[0]):
        alone_ids = ids[b, mask[b].bool()][None]
        alone = constrained_beam_search(model, alone_ids, torch.ones_like(alone_ids), trie, beam_width=20)
        assert torch.equal(alone.items[0], batch.items[b])
        torch.testing.assert_close(alone.scores[0], batch.scores[b], atol=1e-4, rtol=0)


def test_outputs_are_always_real_distinct_items():
    rows = catalogue(7, (2, 3, 2), seed=2)  # fewer items than beams: dead beams must be dropped
    trie = ItemTrie(rows)
    model = tiny_llama(int(rows.max()) + 1)
    ids, mask = prompts([5, 9, 3], seed=1)
    for tree in (True, False):
        res = constrained_beam_search(model, ids, mask, trie, beam_width=20, tree_attention=tree)
        assert res.items.shape == (3, 7)
        for row in res.items.tolist():
            assert sorted(row) == list(range(7))
        assert torch.isfinite(res.scores).all()
    ref = generate_reference(model, ids, mask, trie, beam_width=20)
    assert torch.equal(ref.items, res.items)
    cut = constrained_beam_search(model, ids, mask, trie, beam_width=20, topk=3)
    assert torch.equal(cut.items, res.items[:, :3])


def test_rejects_right_padding(setup):
    model, trie, ids, mask = setup
    with pytest.raises(ValueError, match="left-padded"):
        constrained_beam_search(model, ids, mask.flip(1), trie)


def test_bfloat16_and_peft_models(setup):
    model, trie, ids, mask = setup
    fp32 = constrained_beam_search(model, ids, mask, trie, beam_width=20)
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora = constrained_beam_search(peft_model, ids, mask, trie, beam_width=20)
    assert torch.equal(lora.items, fp32.items)  # LoRA B starts at zero: same function
    bf16 = constrained_beam_search(copy.deepcopy(model).to(torch.bfloat16), ids, mask, trie, beam_width=20)
    assert bf16.scores.dtype == torch.float32
    assert ((bf16.items >= 0) & (bf16.items < trie.n_items)).all()
    assert (bf16.items[:, 0] == fp32.items[:, 0]).float().mean() >= 0.75


@pytest.mark.parametrize("sliding", [False, True])
def test_other_architecture_qwen2(setup, sliding):
    """Qwen2 (bias in q/k/v); with a sliding-window layer the search falls back to the expanded cache."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, trie, ids, mask = setup
    torch.manual_seed(1)
    extra = {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1} if sliding else {}
    cfg = Qwen2Config(
        vocab_size=int(trie.item_token_ids.max()) + 1,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **extra,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    fast = constrained_beam_search(model, ids, mask, trie, beam_width=20)
    ref = generate_reference(model, ids, mask, trie, beam_width=20)
    assert torch.equal(fast.items, ref.items)
    torch.testing.assert_close(fast.scores, ref.scores, atol=1e-4, rtol=0)
    if sliding:
        with pytest.raises(ValueError, match="sliding window"):
            constrained_beam_search(model, ids, mask, trie, tree_attention=True)


def shared_prompts(lengths: list[int], prefix: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts that all open with the same ``prefix`` tokens (a chat frame)."""
    ids, mask = prompts(lengths, seed)
    head = torch.randint(1, TEXT_VOCAB, (prefix,), generator=torch.Generator().manual_seed(seed + 7))
    T = ids.shape[1]
    for b, n in enumerate(lengths):
        ids[b, T - n:T - n + prefix] = head
    return ids, mask


def test_shared_prefix_is_the_longest_common_opening():
    ids, mask = shared_prompts([12, 7, 16, 9], prefix=5)
    from align3gr_kit.decoding.beam import shared_prefix

    # by hand: the longest p with every row's first p real tokens equal (random tails may extend it)
    rows = [ids[b, mask[b].bool()].tolist() for b in range(4)]
    p = 0
    while p < min(map(len, rows)) - 1 and len({tuple(r[:p + 1]) for r in rows}) == 1:
        p += 1
    assert shared_prefix(ids, mask) == p >= 5
    assert shared_prefix(*shared_prompts([6, 6], prefix=6)) == 5  # the last token always stays per prompt
    assert shared_prefix(ids[:1], mask[:1]) == 0  # one prompt: nothing to share


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_shared_prefix_changes_nothing_but_the_work(setup, attn):
    """The prompts' common opening run once (issue 38) gives the items and scores of running each prompt
    whole, and of generate() itself."""
    model, trie, _, _ = setup
    ids, mask = shared_prompts([12, 7, 16, 9, 10], prefix=6, seed=3)
    model.set_attn_implementation(attn)
    try:
        shared = constrained_beam_search(model, ids, mask, trie, beam_width=20, share_prefix=True)
        whole = constrained_beam_search(model, ids, mask, trie, beam_width=20, share_prefix=False)
        expanded = constrained_beam_search(model, ids, mask, trie, beam_width=20, share_prefix=True,
                                           tree_attention=False)
        ref = generate_reference(model, ids, mask, trie, beam_width=20)
    finally:
        model.set_attn_implementation("sdpa")
    for res in (shared, expanded, ref):
        assert torch.equal(res.items, whole.items)
        torch.testing.assert_close(res.scores, whole.scores, atol=1e-4, rtol=0)


def test_the_shared_prefix_forward_runs_once_for_the_batch(setup, monkeypatch):
    model, trie, _, _ = setup
    ids, mask = shared_prompts([12, 7, 16, 9], prefix=6, seed=3)
    seen = []
    original = model.forward

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    constrained_beam_search(model, ids, mask, trie, beam_width=20)
    p = seen[0][1]
    assert seen[0][0] == 1 and p >= 6  # the prefix, once
    assert seen[1] == (4, ids.shape[1] - p)  # then every prompt's remainder
