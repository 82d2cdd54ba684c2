"""DPO throughput changes that must not change a number: examples tokenized once, statistics read only
when logged, batched item scoring, byte-level fingerprints, LoRA without dropout, the ZeRO-3 refusal,
and the keyword extractor on the GPU."""

from __future__ import annotations

import copy
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

from align3gr_kit.config import DPOConfig, ModelConfig
from align3gr_kit.dpo import SoftmaxDPOCollator, SoftmaxDPOTrainer, StageSpec, make_reference, run_progressive
from align3gr_kit.dpo.negatives import response_logps, response_logps_batch
from align3gr_kit.dpo.softmax_dpo import implicit_rewards, preference_stats
from align3gr_kit.dpo.trainer import (
    STAT_KEYS,
    check_reference_placement,
    parameter_fingerprint,
    precompute_reference_logps,
    score_batch,
    tokenize_dataset,
)
from align3gr_kit.model.encoding import encode_prompts, prompt_encoder
from align3gr_kit.model.lora import apply_lora
from test_dpo_shared_prompt import mixed_examples
from test_dpo_training import examples_for, tiny_world, training_args

CHAT = ("{% for m in messages %}[BOS] user {{ m['content'] }} [EOS]{% endfor %}"
        "{% if add_generation_prompt %} item :{% endif %}")


@pytest.fixture(scope="module")
def world():
    return tiny_world()


def chat_tokenizer(tok):
    chat = copy.deepcopy(tok)
    chat.chat_template = CHAT
    return chat


@pytest.mark.parametrize("share_prompt", [True, False])
@pytest.mark.parametrize("chat", [False, True])
def test_pretokenized_examples_collate_to_the_same_tensors(world, share_prompt, chat):
    items, users, tok, model = world
    tok = chat_tokenizer(tok) if chat else tok
    ex = mixed_examples(items, users)
    for max_length in (64, 9):  # 9: prompts cut, differently for responses of different lengths
        collator = SoftmaxDPOCollator(tok, max_length, share_prompt=share_prompt)
        with_ref = precompute_reference_logps(make_reference(model), ex, collator, batch_size=2)
        assert all({"prompt_ids", "chosen_ids", "rejected_ids"} <= set(e) for e in with_ref)
        text = SoftmaxDPOCollator(tok, max_length, share_prompt=share_prompt)
        want = text([{k: e[k] for k in e if not k.endswith("_ids")} for e in with_ref])
        ds = tokenize_dataset(Dataset.from_list([{k: e[k] for k in e if not k.endswith("_ids")} for e in with_ref]),
                              collator)
        for got in (collator(with_ref), collator(collator.tokenize(ex)), collator([ds[i] for i in range(len(ds))])):
            ref_keys = {"ref_chosen_logps", "ref_rejected_logps"}
            assert set(got) | ref_keys == set(want) | ref_keys
            for k in set(got) & set(want):
                assert torch.equal(got[k], want[k]), k
    # the encoder renders the frame once and still gives encode_prompts' ids
    for p in (e["prompt"] for e in ex):
        assert prompt_encoder(tok, 7)(p) == encode_prompts(tok, [p], 7)[0]
        assert prompt_encoder(tok)(p) == encode_prompts(tok, [p])[0]


def test_trainer_tokenizes_its_dataset_once(world, tmp_path, monkeypatch):
    items, users, tok, model = world
    collator = SoftmaxDPOCollator(tok, 64)
    data = precompute_reference_logps(make_reference(model), examples_for(items, users), collator)
    plain = Dataset.from_list([{k: e[k] for k in e if not k.endswith("_ids")} for e in data])
    trainer = SoftmaxDPOTrainer(model=make_reference(model).requires_grad_(True).train(), beta=0.5,
                                args=training_args(tmp_path, max_steps=2), train_dataset=plain, data_collator=collator)
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(trainer.train_dataset.column_names)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a training step tokenized text")

    monkeypatch.setattr(type(tok), "__call__", no_tokenizing)
    monkeypatch.setattr(type(tok), "apply_chat_template", no_tokenizing)
    trainer.train()
    assert trainer.state.global_step == 2


def _per_step_stats(policy, batch, beta):
    """The logged statistics of one batch, read at once (the trainer's pre-change computation)."""
    with torch.no_grad():
        pc, pr = score_batch(policy, batch)
    mask = batch["rejected_mask"]
    cr, rr = implicit_rewards(pc, pr, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta)
    stats = {k: v.item() for k, v in preference_stats(cr, rr, mask).items()}
    stats["logps/chosen"] = pc.mean().item()
    stats["logps/rejected"] = ((pr * mask).sum(-1) / mask.sum(-1)).mean().item()
    return stats


def test_statistics_are_summed_on_device_and_logged_as_the_per_step_means(world, tmp_path, monkeypatch):
    items, users, tok, model = world
    ref = make_reference(model)
    policy = make_reference(model).requires_grad_(True).train()
    with torch.no_grad():  # away from the reference, so every statistic is non-zero
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    collator = SoftmaxDPOCollator(tok, 64)
    batches = [collator(precompute_reference_logps(ref, examples_for(items, users, n_prompts=3, seed=s), collator))
               for s in range(6)]
    trainers = [SoftmaxDPOTrainer(model=policy, beta=0.5, args=training_args(tmp_path / str(r)), data_collator=collator)
                for r in range(2)]
    # two "ranks", three steps each; no statistic may be read from the device during a step
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a step read a statistic with .item()"))
    for step in range(3):
        for rank, trainer in enumerate(trainers):
            trainer.compute_loss(policy, batches[2 * step + rank])
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    per_step = [_per_step_stats(policy, b, 0.5) for b in batches]
    # the old logging: each step, the mean over ranks; at the log, the mean over steps
    want = {k: np.mean([(per_step[2 * s][k] + per_step[2 * s + 1][k]) / 2 for s in range(3)]) for k in STAT_KEYS}
    other = trainers[1]._stat_sums["train"]
    gathered = []
    trainers[0].accelerator.gather = lambda t: gathered.append(t) or torch.cat([t, other[None]])
    trainers[0].log({"loss": 1.0})
    assert len(gathered) == 1 and gathered[0].shape == (1, len(STAT_KEYS))  # one collective per log
    logged = trainers[0].state.log_history[-1]
    assert logged["loss"] == 1.0 and all(abs(logged[k]) > 1e-4 for k in ("rewards/margins", "logps/chosen"))
    for k in STAT_KEYS:
        assert logged[k] == pytest.approx(want[k], abs=1e-6, rel=1e-6), k
    trainers[0].log({"loss": 2.0})  # nothing accumulated since: only the loss
    assert not set(STAT_KEYS) & set(trainers[0].state.log_history[-1])


def test_batched_response_logps_equal_one_prompt_at_a_time_and_teacher_forcing(world):
    items, users, tok, model = world
    model.eval()
    prompts = [e["prompt"] for e in examples_for(items, users, n_prompts=4)]
    queries = [(prompts[0], [3, 5, 7]), (prompts[1], list(range(11))), (prompts[2], [1]), (prompts[3], [])]
    got = response_logps_batch(model, tok, queries, items, batch_size=4)
    assert [len(g) for g in got] == [3, 11, 1, 0] and all(g.dtype == np.float64 for g in got)
    for (prompt, its), g in zip(queries, got):
        np.testing.assert_allclose(g, response_logps(model, tok, prompt, its, items, batch_size=4), atol=1e-5, rtol=1e-5)
        for item, value in zip(its, g):  # independent: the item's SCID after BOS + prompt, full logits
            p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
            r = tok(items.string(item), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
            assert value == pytest.approx(float(sum(logp[len(p) - 1 + j, r[j]] for j in range(len(r)))), abs=1e-4)


def test_fingerprint_hashes_raw_bytes_in_each_dtype():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    h = hashlib.sha256()  # independent: the documented layout, written out
    for name, p in sorted(lin.named_parameters()):
        h.update(f"{name}|torch.float32|{tuple(p.shape)}|".encode() + p.detach().numpy().tobytes())
    assert parameter_fingerprint(lin) == h.hexdigest()[:16]

    half = copy.deepcopy(lin).to(torch.bfloat16)
    fp = parameter_fingerprint(half)  # bf16 has no numpy dtype: hashed through a byte view
    assert fp == parameter_fingerprint(copy.deepcopy(half)) and fp != parameter_fingerprint(lin)
    with torch.no_grad():  # one ulp of one bf16 weight changes it
        half.weight.view(torch.int16)[0, 0] += 1
    assert parameter_fingerprint(half) != fp
    with torch.no_grad():
        half.weight.view(torch.int16)[0, 0] -= 1
    assert parameter_fingerprint(half) == fp


def test_dpo_lora_has_no_dropout_in_policy_or_adapters(world, tmp_path):
    items, users, tok, model = world
    scid_ids = tok.convert_tokens_to_ids(items.vocabulary())
    cfg = ModelConfig(lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.5)
    batch = SoftmaxDPOCollator(tok, 64)(examples_for(items, users))

    def twice(dropout):
        policy = apply_lora(copy.deepcopy(model), cfg, new_ids=scid_ids, dropout=dropout).train()
        with torch.no_grad():  # LoRA B starts at 0: move it so the branch (and its dropout) matters
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.add_(0.5)
            return [torch.cat(score_batch(policy, batch)[:1]) for _ in range(2)]

    a, b = twice(0.0)
    assert torch.equal(a, b)
    a, b = twice(None)  # cfg's 0.5: the check above can fail
    assert not torch.equal(a, b)

    # run_progressive: whatever wrap_fn adds is scored without dropout too
    dropouts = []

    def wrap(m):
        wrapped = apply_lora(m, cfg, new_ids=scid_ids)
        dropouts.extend(x for x in wrapped.modules() if isinstance(x, torch.nn.Dropout))
        return wrapped

    stage = StageSpec("easy", lambda ref: examples_for(items, users))
    run_progressive(copy.deepcopy(model), tok, [stage], DPOConfig(batch_size=3, max_steps=1, logging_steps=1),
                    tmp_path / "out", wrap_fn=wrap)
    assert dropouts and all(d.p == 0 for d in dropouts)


def test_on_the_fly_reference_is_refused_under_zero3(world):
    ref = make_reference(world[3])
    with pytest.raises(ValueError, match="precompute_ref"):
        check_reference_placement(ref, SimpleNamespace(zero_stage=3))
    check_reference_placement(ref, SimpleNamespace(zero_stage=2))
    check_reference_placement(ref, None)
    check_reference_placement(None, SimpleNamespace(zero_stage=3))  # precomputed log-probs: fine


def test_keyword_extractor_generates_on_the_gpu_and_moves_back(monkeypatch):
    from test_prompts_llm_keywords import tiny_lm

    from align3gr_kit.prompts.llm_keywords import LLMKeywords

    model, tok = tiny_lm(silent=False)
    moves, freed = [], []
    real_to = model.to
    # a CPU-only machine: record the move to cuda, keep the weights where they are
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    model.to = lambda device: moves.append(str(device)) or real_to("cpu")
    ex = LLMKeywords(load=lambda: (model, tok), model_id="tiny", max_description_tokens=3, max_keyword_tokens=4)
    ex.annotate(["a b c\nd e f", "g h"])
    assert moves == ["cuda", "cpu"] and freed == [True]
    ex.annotate(["a b c\nd e f", "g h"])  # no cache: the model goes to the device again
    assert moves == ["cuda", "cpu"] * 2
