"""SFT on transformers.Trainer: completion-only labels, learning, LoRA training the SCID rows, clean
copies, length grouping."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from align3gr_kit.config import RunConfig
from align3gr_kit.model import build_backbone, encode_prompts
from align3gr_kit.scid import ScidTable
from align3gr_kit.train.artifacts import LOG_HISTORY
from align3gr_kit.train.sft import train_sft

ITEMS = ScidTable(np.array([[i % 3, i // 3, 0] for i in range(9)]), "item")
USERS = ScidTable(np.array([[0, 0], [1, 0]]), "user")
TOKENS = ITEMS.vocabulary() + USERS.vocabulary()


FAVOURITE = {0: 4, 1: 8}  # user -> the item that user always picks next (first tokens <a_1> vs <a_2>)


def toy_sft(n: int = 24) -> Dataset:
    """A learnable mapping: whatever item a user saw, the next one is the user's favourite."""
    rows = [{"prompt": f"User {USERS.string(k % 2)} saw {ITEMS.string(k % 9)}. Next:\n",
             "completion": ITEMS.string(FAVOURITE[k % 2]), "task": "A"} for k in range(n)]
    return Dataset.from_list(rows)


def run_cfg(tmp_path: Path, **sft) -> RunConfig:
    return RunConfig.from_dict({
        "seed": 0, "runs_dir": str(tmp_path),
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "bpe_vocab_size": 300, "sa_init": False},
        "sft": {"batch_size": 8, "logging_steps": 1, "lr": 5e-3, "warmup_steps": 0, **sft},
    })


def corpus():
    return [r["prompt"] + r["completion"] for r in toy_sft()] * 3


def test_loss_on_completion_only_and_it_learns(tmp_path):
    cfg = run_cfg(tmp_path, max_steps=40, lr=1e-2)
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    data = toy_sft()
    res = train_sft(cfg, model, tok, data, tmp_path / "out")
    trainer = res["trainer"]
    batch = trainer.data_collator([trainer.train_dataset[0]])
    n_prompt = len(encode_prompts(tok, [data[0]["prompt"]])[0])
    labels, ids = batch["labels"].tolist(), batch["input_ids"][0].tolist()
    # logits at the last prompt token and every completion token but EOS; labels: the next tokens
    n_comp = len(ids) - n_prompt
    assert batch["logits_to_keep"][0].nonzero().flatten().tolist() == list(range(n_prompt - 1, len(ids) - 1))
    assert len(labels) == n_comp and labels == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[n_prompt:-1]) == ITEMS.tokens(FAVOURITE[0])
    assert res["steps"] == 40 and res["world_size"] == 1
    assert res["last_loss"] < 0.5 * res["first_loss"]
    hist = json.loads((tmp_path / "out" / LOG_HISTORY).read_text())
    assert [h["step"] for h in hist if "loss" in h][:3] == [1, 2, 3]
    # The trained model tells the two users apart at the first SCID level.
    model = res["model"].eval()
    for k in (2, 3):
        x = torch.as_tensor(encode_prompts(tok, [data[k]["prompt"]]))
        first = tok.convert_ids_to_tokens(int(model(input_ids=x).logits[0, -1].argmax()))
        assert first == ITEMS.tokens(FAVOURITE[k % 2])[0]


def test_lora_trains_new_token_rows_of_both_matrices(tmp_path):
    cfg = run_cfg(tmp_path, max_steps=3).override({"model.lora": True, "model.lora_r": 4})
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    ids = tok.convert_tokens_to_ids(TOKENS)
    emb0 = model.get_input_embeddings().weight[ids].detach().clone()
    out0 = model.get_output_embeddings().weight[ids].detach().clone()
    q0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    res = train_sft(cfg, model, tok, toy_sft(), tmp_path / "out")
    trained = res["model"]
    assert hasattr(trained, "peft_config")
    assert 0 < res["trainable"]["trainable"] < res["trainable"]["total"]
    emb1 = trained.get_input_embeddings().weight[ids].detach()  # the rows in use, SCID deltas included
    out1 = trained.get_output_embeddings().weight[ids].detach()
    assert (emb1 - emb0).abs().amax(1).min() > 0, "every SCID input row (all appear in prompts) must move"
    assert (out1 - out0).abs().amax(1).min() > 0, "every SCID output row must move"
    base_q = trained.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(base_q, q0), "LoRA must leave the frozen base weights untouched"
    # Beam search runs on the adapter model and ranks like the merged model that gets saved (fp32 on
    # both sides: bf16 autocast would round the adapter and the merged weights differently).
    import pandas as pd

    from align3gr_kit.config import DecodeConfig
    from align3gr_kit.evaluate import recommend
    from align3gr_kit.model import load_model, save_model

    samples = pd.DataFrame({"user_id": [0, 1, 0], "history": [[1, 2], [3], [5, 6, 7]], "target": [4, 8, 4]})
    decode = DecodeConfig(beam_width=9, topk=[5])
    adapter_items, adapter_scores = recommend(trained, tok, ITEMS, USERS, samples, decode, True, progress=False,
                                              precision="float32")
    save_model(trained, tok, tmp_path / "merged", ITEMS, USERS)
    merged, tok2, _, _ = load_model(tmp_path / "merged")
    merged_items, merged_scores = recommend(merged, tok2, ITEMS, USERS, samples, decode, True, progress=False,
                                            precision="float32")
    assert np.array_equal(adapter_items, merged_items) and (adapter_items >= 0).all()
    assert np.allclose(adapter_scores, merged_scores, atol=1e-4)


def test_trained_model_deep_copies_cleanly(tmp_path):
    """A deep copy of the trained model (e.g. a frozen DPO reference) computes with its own weights
    (no instance-level forward patched by a trainer survives training)."""
    import copy

    cfg = run_cfg(tmp_path, max_steps=2)
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    trained = train_sft(cfg, model, tok, toy_sft(), tmp_path / "out")["model"].eval()
    twin = copy.deepcopy(trained)
    with torch.no_grad():
        twin.get_output_embeddings().weight.zero_()
    x = torch.as_tensor(encode_prompts(tok, [toy_sft()[0]["prompt"]]))
    assert torch.count_nonzero(twin(input_ids=x).logits) == 0
    assert torch.count_nonzero(trained(input_ids=x).logits) > 0


def test_completion_collator_masks_prompt_and_padding():
    from align3gr_kit.train.sft import CompletionCollator

    rows = [{"input_ids": [5, 6, 7, 8], "completion_mask": [0, 0, 1, 1]},
            {"input_ids": [5, 9, 3], "completion_mask": [0, 1, 1]}]
    b = CompletionCollator(pad_id=0)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [0, 5, 9, 3]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, 9, 3]]
    # logits only where a label is next: positions 1, 2 of row 0 and 1, 2 of row 1
    k = CompletionCollator(pad_id=0, logits_to_keep=True)(rows)
    assert k["logits_to_keep"].tolist() == [[False, True, True, False], [False, True, True, False]]
    assert k["labels"].tolist() == k["shift_labels"].tolist() == [7, 8, 9, 3]


def test_logits_to_keep_gives_the_full_loss(tmp_path):
    """The label-only loss (LM head on the positions a label follows) equals the loss over all positions."""
    from align3gr_kit.train.sft import CompletionCollator, tokenize_sft

    cfg = run_cfg(tmp_path)
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    rows = list(tokenize_sft(toy_sft(6), tok, 64))
    rows[0]["input_ids"], rows[0]["completion_mask"] = rows[0]["input_ids"][3:], rows[0]["completion_mask"][3:]
    full = CompletionCollator(tok.pad_token_id)(rows)
    window = CompletionCollator(tok.pad_token_id, logits_to_keep=True)(rows)
    with torch.no_grad():
        a = model(**full).loss
        b = model(**window).loss
    assert int(window["logits_to_keep"].sum()) < full["input_ids"].numel()
    assert torch.allclose(a, b, atol=1e-6)


def test_padding_fraction_and_length_grouping():
    from align3gr_kit.train.sft import length_grouping_report, padding_fraction

    # hand example: batches [2, 4] and [3, 3] -> padded 8 + 6 = 14 slots for 12 tokens
    assert abs(padding_fraction([2, 4, 3, 3], [0, 1, 2, 3], 2) - (1 - 12 / 14)) < 1e-12
    assert padding_fraction([1, 4, 1, 4], [0, 1, 2, 3], 2) == 1 - 10 / 16
    assert padding_fraction([1, 4, 1, 4], [0, 2, 1, 3], 2) == 0.0  # sorted: no padding
    assert padding_fraction([7, 7, 7], [2, 1, 0], 2) == 0.0
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, size=2000).tolist()
    rep = length_grouping_report(lengths, batch_size=16, group_size=16, seed=0)
    assert rep["padding_random"] > 0.3 and rep["padding_grouped"] < 0.05


def test_trainer_bf16_autocasts_on_cpu(tmp_path):
    """model.dtype bfloat16 -> Trainer(bf16=True, use_cpu=True): the forward runs under CPU bf16
    autocast (linear outputs in bf16) while the master weights stay fp32."""
    cfg = run_cfg(tmp_path, max_steps=1).override({"model.dtype": "bfloat16"})
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    res = train_sft(cfg, model, tok, toy_sft(), tmp_path / "out")
    assert res["bf16"] and seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in res["model"].parameters())


class _Killed(Exception):
    pass


def _kill_at(step: int):
    """A callback that stops training like a kill would, once ``step`` optimiser steps are done."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Killed

    return Kill()


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_killed_sft_resumes_from_its_checkpoint(tmp_path, lora):
    """Killed after step 4 with a checkpoint at step 3, the re-run continues from step 3 and ends
    with the weights (SCID rows included), loss curve and step count of an uninterrupted run."""
    cfg = run_cfg(tmp_path, max_steps=6, save_steps=3, lr=1e-2).override(
        {"model.lora": lora, "model.lora_r": 4, "model.lora_dropout": 0.1})

    def fresh():
        return build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)

    model, tok = fresh()
    straight = train_sft(cfg, model, tok, toy_sft(), tmp_path / "a", checkpoint_dir=tmp_path / "ck_a")
    assert straight["resumed_from_step"] == 0 and straight["steps"] == 6
    assert sorted(p.name for p in (tmp_path / "ck_a").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-6"]

    model, tok = fresh()
    with pytest.raises(_Killed):
        train_sft(cfg, model, tok, toy_sft(), tmp_path / "b", checkpoint_dir=tmp_path / "ck_b", callbacks=[_kill_at(4)])
    assert (tmp_path / "ck_b" / "checkpoint-3").is_dir()
    model, tok = fresh()
    resumed = train_sft(cfg, model, tok, toy_sft(), tmp_path / "b", checkpoint_dir=tmp_path / "ck_b")
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    want, got = _weights(straight["model"]), _weights(resumed["model"])
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-6), k
    losses = [(h["step"], h["loss"]) for h in resumed["log_history"] if "loss" in h]
    assert [s for s, _ in losses] == list(range(1, 7))
    assert np.allclose([l for _, l in losses], [h["loss"] for h in straight["log_history"] if "loss" in h], atol=1e-5)

    # the control: a checkpoint from another point of training gives other weights
    model, tok = fresh()
    other = train_sft(cfg.override({"sft.lr": 2e-2}), model, tok, toy_sft(), tmp_path / "c")
    assert any(not torch.allclose(want[k], v, atol=1e-6) for k, v in _weights(other["model"]).items())


def test_fixed_task_a_mix_holds_equal_task_a_and_the_other_tasks_on_top(tmp_path):
    """sft.fixed_task_a (issue 37): E_A = max_steps x batch x grad_accum task-A examples, each other task
    round(E_A x n_t / n_A) on top, each task's rows cycled evenly; training is one pass over that mix."""
    from align3gr_kit.train.sft import fixed_task_a_mix

    tasks = ["A"] * 6 + ["B1"] * 4 + ["C2"] * 3  # n_A = 6
    data = Dataset.from_list([{**toy_sft(13)[i], "task": t, "row": i} for i, t in enumerate(tasks)])
    cfg = run_cfg(tmp_path, max_steps=2, batch_size=8, grad_accum=1, fixed_task_a=True)
    mix, counts = fixed_task_a_mix(data, cfg)
    # by hand: E_A = 2 x 8 = 16; B1 16 x 4/6 = 10.67 -> 11; C2 16 x 3/6 = 8
    assert counts == {"task_a_examples": 16, "mix_examples": 35, "task_examples": {"A": 16, "B1": 11, "C2": 8}}
    seen = np.bincount(mix["row"], minlength=13)
    assert len(mix) == 35 and sorted(set(seen[:6])) == [2, 3] and seen[:6].sum() == 16  # 16 over 6 rows
    assert sorted(set(seen[6:10])) == [2, 3] and seen[6:10].sum() == 11 and sorted(seen[10:]) == [2, 3, 3]
    assert fixed_task_a_mix(data, cfg)[0]["row"] == mix["row"]  # seeded
    # A alone: the same 16 task-A examples, nothing on top, what max_steps x batch trains without the rule
    only_a = data.select(range(6))
    assert fixed_task_a_mix(only_a, cfg)[1]["mix_examples"] == 16
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    res = train_sft(cfg, model, tok, data, tmp_path / "out")
    assert res["steps"] == 5 and (res["task_a_examples"], res["mix_examples"]) == (16, 35)  # ceil(35 / 8) steps
    with pytest.raises(ValueError, match="no task-A rows"):
        fixed_task_a_mix(data.select(range(6, 13)), cfg)
