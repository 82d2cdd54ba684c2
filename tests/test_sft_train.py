"""SFT with trl: completion-only labels, learning, LoRA training the SCID rows, clean copies."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
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
    ex = res["trainer"].train_dataset[0]
    n_prompt = len(encode_prompts(tok, [data[0]["prompt"]])[0])
    labels, ids = ex["labels"], ex["input_ids"]
    assert all(x == -100 for x in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
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
    emb1 = trained.get_input_embeddings().weight[ids].detach()  # the modules_to_save copy in use
    out1 = trained.get_output_embeddings().weight[ids].detach()
    assert (emb1 - emb0).abs().amax(1).min() > 0, "every SCID input row (all appear in prompts) must move"
    assert (out1 - out0).abs().amax(1).min() > 0, "every SCID output row must move"
    base_q = trained.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(base_q, q0), "LoRA must leave the frozen base weights untouched"
    # Beam search runs on the adapter model and ranks like the merged model that gets saved. (Reloaded,
    # not deep-copied: trl's fused-head patch binds the original forward, so a deep copy would still
    # run the original module.)
    import pandas as pd

    from align3gr_kit.config import DecodeConfig
    from align3gr_kit.evaluate import recommend
    from align3gr_kit.model import load_model, save_model

    samples = pd.DataFrame({"user_id": [0, 1, 0], "history": [[1, 2], [3], [5, 6, 7]], "target": [4, 8, 4]})
    decode = DecodeConfig(beam_width=9, topk=[5])
    adapter_items, adapter_scores = recommend(trained, tok, ITEMS, USERS, samples, decode, True, progress=False)
    save_model(trained, tok, tmp_path / "merged", ITEMS, USERS)
    merged, tok2, _, _ = load_model(tmp_path / "merged")
    merged_items, merged_scores = recommend(merged, tok2, ITEMS, USERS, samples, decode, True, progress=False)
    assert np.array_equal(adapter_items, merged_items) and (adapter_items >= 0).all()
    assert np.allclose(adapter_scores, merged_scores, atol=1e-4)


def test_trained_model_deep_copies_cleanly(tmp_path):
    """After training the model runs its own forward (trl's fused-head patch is removed), so a deep
    copy (e.g. a frozen DPO reference) computes with its own weights."""
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
