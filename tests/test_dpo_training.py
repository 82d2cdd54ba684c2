"""Softmax-DPO with a tiny Llama: batched log-probs, the trainer, references, progressive stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainingArguments

from align3gr_kit.config import DPOConfig
from align3gr_kit.dpo import (
    NegativeSampler,
    SoftmaxDPOCollator,
    SoftmaxDPOTrainer,
    StageSpec,
    batched_logps,
    beam_candidates,
    build_sp_preferences,
    make_reference,
    parameter_fingerprint,
    precompute_reference_logps,
    run_progressive,
    sample_prompts,
    sequential_prompts,
    shared_prefix,
    softmax_dpo_loss,
)
from align3gr_kit.dpo.trainer import score_batch
from align3gr_kit.scid import ScidTable
from align3gr_kit.utils import read_json

WORDS = ["user", "history", "next", "item", ",", ":"]


def prompt_fn(user: str | None, history: list[str]) -> str:
    return f"user {user or ''} history : {' , '.join(history)} next :"


def tiny_tokenizer(item_scids: ScidTable, user_scids: ScidTable) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: k for k, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_tokens(item_scids.vocabulary() + user_scids.vocabulary())
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]")


def tiny_world(n_items: int = 40, n_users: int = 6, seed: int = 0):
    """Random unique 3-level item SCIDs (4 codes per level), 2-level user SCIDs, tokenizer, tiny Llama."""
    rng = np.random.default_rng(seed)
    grid = np.array(np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij")).reshape(3, -1).T
    items = ScidTable(grid[rng.choice(len(grid), n_items, replace=False)], "item")
    users = ScidTable(np.stack([np.arange(n_users) % 3, np.arange(n_users) // 3], 1), "user")
    tok = tiny_tokenizer(items, users)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, initializer_range=0.3,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).float()
    return items, users, tok, model


def examples_for(items: ScidTable, users: ScidTable, n_prompts: int = 6, n_rejected: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_prompts):
        hist = rng.choice(items.n, size=1 + k % 4, replace=False)
        target = int((hist[-1] + 1) % items.n)
        rej = [int(x) for x in rng.choice(np.setdiff1d(np.arange(items.n), [target]), size=n_rejected - (k % 2), replace=False)]
        out.append({"prompt": prompt_fn(users.string(k % users.n), [items.string(int(i)) for i in hist]),
                    "chosen": items.string(target), "rejected": [items.string(i) for i in rej]})
    return out


def training_args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=3, report_to="none",
                remove_unused_columns=False, use_cpu=True, save_strategy="no", logging_steps=1, seed=0)
    return TrainingArguments(**{**base, **kw})


@pytest.fixture(scope="module")
def world():
    return tiny_world()


def test_collator_layout_and_labels(world):
    items, users, tok, _ = world
    ex = examples_for(items, users)
    batch = SoftmaxDPOCollator(tok, max_length=64, share_prompt=False)(ex)
    n_seq = len(ex) + sum(len(e["rejected"]) for e in ex)
    assert batch["input_ids"].shape[0] == n_seq
    assert batch["rejected_mask"].tolist() == [[True, True, True], [True, True, False]] * 3
    # every row: exactly the 3 SCID tokens labelled, at the end (left padding), equal to the response
    labelled = batch["labels"] != -100
    assert labelled.sum(1).tolist() == [3] * n_seq and labelled[:, -3:].all()
    target = items.lookup()[items.parse(ex[0]["chosen"])]
    assert tok.convert_ids_to_tokens(batch["labels"][0, -3:].tolist()) == items.tokens(target)
    assert tok.convert_ids_to_tokens(batch["labels"][len(ex), -3:].tolist()) == tok.tokenize(ex[0]["rejected"][0])
    # the prompt is left-truncated when too long, never the response
    short = SoftmaxDPOCollator(tok, max_length=6, share_prompt=False)(ex[:1])
    assert short["input_ids"].shape[1] == 6 and (short["labels"] != -100).sum(1).tolist() == [3] * 4
    assert (short["input_ids"][:, 0] == tok.bos_token_id).all()  # BOS survives the cut
    assert short["input_ids"][0, 1:3].tolist() == batch["input_ids"][0, -5:-3].tolist()  # the newest prompt tokens


def test_batched_logps_equal_per_sequence_teacher_forcing(world):
    items, users, tok, model = world
    model.eval()
    ex = examples_for(items, users)
    batch = SoftmaxDPOCollator(tok, max_length=64, share_prompt=False)(ex)
    with torch.no_grad():
        got = batched_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        want = []
        for e in ex:  # independent reference: each sequence alone, full logits, explicit log-softmax
            p = [tok.bos_token_id] + tok(e["prompt"], add_special_tokens=False)["input_ids"]  # BOS + text (model.encoding)
            for resp in [e["chosen"], *e["rejected"]]:
                r = tok(resp, add_special_tokens=False)["input_ids"]
                logits = model(torch.tensor([p + r])).logits[0]
                logp = torch.log_softmax(logits.double(), -1)
                want.append(sum(logp[len(p) - 1 + j, r[j]] for j in range(len(r))))
    # the collator puts the chosen rows first, then each prompt's rejected rows in order
    starts = np.cumsum([0] + [1 + len(e["rejected"]) for e in ex])[:-1]
    want_sorted = [want[s] for s in starts] + [want[s + 1 + j] for s, e in zip(starts, ex) for j in range(len(e["rejected"]))]
    torch.testing.assert_close(got.double(), torch.stack(want_sorted), atol=1e-4, rtol=1e-5)


def test_gradients_flow_only_into_policy(world, tmp_path):
    items, users, tok, base = world
    policy = make_reference(base)  # an independent copy to train
    policy.requires_grad_(True).train()
    ref = make_reference(policy)
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    trainer = SoftmaxDPOTrainer(model=policy, ref_model=ref, beta=0.1, args=training_args(tmp_path),
                                train_dataset=examples_for(items, users), data_collator=SoftmaxDPOCollator(tok, 64))
    batch = SoftmaxDPOCollator(tok, 64)(examples_for(items, users))
    loss = trainer.compute_loss(policy, batch)
    # at the start policy == reference: every reward is 0, loss = log(1 + N)
    expected = torch.tensor([np.log(1 + len(e["rejected"])) for e in examples_for(items, users)]).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    assert all(p.grad is None for p in ref.parameters())
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0


def test_precomputed_reference_equals_on_the_fly(world):
    items, users, tok, base = world
    ref = make_reference(base)
    policy = make_reference(base)
    with torch.no_grad():  # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    collator = SoftmaxDPOCollator(tok, 64)
    ex = precompute_reference_logps(ref, examples_for(items, users), collator, batch_size=4)
    batch_pre = collator(ex)
    batch = collator(examples_for(items, users))
    with torch.no_grad():
        pc, pr = score_batch(policy, batch)
        rc, rr = score_batch(ref, batch)
    mask = batch["rejected_mask"]
    a = softmax_dpo_loss(pc, pr, rc, rr, 0.1, mask)
    b = softmax_dpo_loss(pc, pr, batch_pre["ref_chosen_logps"], batch_pre["ref_rejected_logps"], 0.1, mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert a.mean().item() != pytest.approx(np.log(4), abs=1e-3)


def test_training_raises_preference_accuracy_and_logs(world, tmp_path):
    items, users, tok, base = world
    policy = make_reference(base).requires_grad_(True).train()
    ref = make_reference(base)
    collator = SoftmaxDPOCollator(tok, 64)
    data = precompute_reference_logps(ref, examples_for(items, users, n_prompts=6), collator)
    trainer = SoftmaxDPOTrainer(model=policy, beta=0.5, args=training_args(tmp_path, max_steps=12, learning_rate=1e-2),
                                train_dataset=data, data_collator=collator)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert len(logs) == 12
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"):
        assert all(key in h for h in logs)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert logs[-1]["rewards/margins"] > 0.5 and logs[-1]["rewards/accuracies"] == 1.0
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_progressive_reference_is_previous_policy(world, tmp_path):
    items, users, tok, base = world
    policy = make_reference(base).requires_grad_(True).train()
    seen_refs, trained = {}, []

    def builder(name):
        def build(ref):
            assert not any(p.requires_grad for p in ref.parameters())
            seen_refs[name] = {k: v.clone() for k, v in ref.state_dict().items()}
            return examples_for(items, users, seed=len(seen_refs))
        return StageSpec(name, build)

    def evaluate_fn(model):
        trained.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"valid": {"score": float(len(trained))}}

    cfg = DPOConfig(beta=0.5, n_rejected=3, batch_size=3, max_steps=3, lr=1e-2, logging_steps=1)
    hist = run_progressive(policy, tok, [builder("easy"), builder("hard")], cfg, tmp_path / "out", evaluate_fn=evaluate_fn)
    start, after_easy, after_hard = trained
    for k in start:
        torch.testing.assert_close(seen_refs["easy"][k], start[k], rtol=0, atol=0)
        torch.testing.assert_close(seen_refs["hard"][k], after_easy[k], rtol=0, atol=0)
    assert any(not torch.equal(start[k], after_easy[k]) for k in start)
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "out" / "easy" / "model")
    for k, v in saved.state_dict().items():
        torch.testing.assert_close(v, after_easy[k], rtol=0, atol=0)
    on_disk = read_json(tmp_path / "out" / "history.json")
    assert [s["stage"] for s in on_disk["stages"]] == ["easy", "hard"]
    assert on_disk["stages"][1]["reference_fingerprint"] == on_disk["stages"][0]["policy_fingerprint"]
    assert on_disk["stages"][0]["reference_fingerprint"] != on_disk["stages"][0]["policy_fingerprint"]
    assert on_disk["start"] == {"valid": {"score": 1.0}} and on_disk["stages"][1]["metrics"] == {"valid": {"score": 3.0}}
    assert parameter_fingerprint(hist["policy"]) == on_disk["stages"][1]["policy_fingerprint"]
    for name in ("easy", "hard"):
        assert (tmp_path / "out" / name / "preferences.jsonl").exists()
        assert any("rewards/margins" in h for h in read_json(tmp_path / "out" / name / "log_history.json"))


def test_self_play_beams_give_graded_negatives(world):
    items, users, tok, model = world
    train = __import__("pandas").DataFrame({"user_id": [0, 1, 2, 3], "history": [[1, 2], [3], [4, 5, 6], [7]],
                                            "target": [3, 4, 7, 8]})
    samples = sample_prompts(train, 0, 0, "sp/hard")
    prompts = sequential_prompts(samples, items, users, prompt_fn)
    cands = beam_candidates(model, tok, prompts, items, beam_width=10, batch_size=2)
    assert cands.shape == (4, 10) and ((cands >= 0) & (cands < items.n)).all()
    assert all(len(set(row)) == 10 for row in cands.tolist())
    for difficulty, overlap in (("easy", 0), ("medium", 1), ("hard", 2)):
        ex = build_sp_preferences(samples, prompts, items, NegativeSampler(items.codes), difficulty, 4, 0, cands)
        for e in ex:
            assert shared_prefix(items.codes[e["rejected_items"]], items.codes[e["chosen_item"]]).tolist() == [overlap] * len(e["rejected_items"])
            beam_part = e["rejected_items"][: e["from_beams"]]
            row = cands[samples.index[samples.target == e["target"]][0]].tolist()
            assert beam_part == [c for c in row if c in beam_part]  # beam items first, in beam order
