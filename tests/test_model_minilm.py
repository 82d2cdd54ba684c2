"""The pretrained offline backbone (all-MiniLM-L6-v2 as a causal decoder): SA-Init on a real
embedding table, a head consistent with trl's fused LM head, LoRA with tied matrices, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align3gr_kit.config import ModelConfig
from align3gr_kit.model import apply_lora, build_backbone, load_model, save_model, trainable_parameters

TOKENS = ["<a_0>", "<a_1>", "<b_0>", "<ua_0>"]
KEYWORDS = {"<a_0>": ["guitar", "strings"], "<a_1>": ["piano", "keyboard"], "<b_0>": ["drum"], "<ua_0>": ["student"]}


@pytest.fixture(scope="module")
def minilm():
    model, tok = build_backbone(ModelConfig(base="minilm", sa_init=True), [], TOKENS, seed=0, keywords=KEYWORDS)
    return model.eval(), tok


def test_sa_init_on_a_pretrained_table(minilm):
    model, tok = minilm
    w = model.get_input_embeddings().weight.detach()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # BERT ties them
    for token, words in KEYWORDS.items():
        # Independent path: the raw `tokenizers` object; eq. 9 = one mean over all sub-tokens.
        sub = [i for kw in words for i in tok.backend_tokenizer.encode(" " + kw, add_special_tokens=False).ids]
        assert torch.allclose(w[tok.convert_tokens_to_ids(token)], w[sub].mean(0), atol=1e-6)
    # The pretrained geometry carries over: <a_1> (piano, keyboard) sits closer to "piano" than to "drum".
    def row(word):
        return w[tok.convert_tokens_to_ids(word)]
    a1 = w[tok.convert_tokens_to_ids("<a_1>")]
    assert F.cosine_similarity(a1, row("piano"), 0) > F.cosine_similarity(a1, row("drum"), 0)


def test_head_matches_trl_fused_head(minilm):
    import copy

    from trl.trainer.utils import add_fused_lm_head

    model, tok = minilm
    x = tok("a guitar <a_0><b_0> for <ua_0>", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**x).logits[0]
        hidden = model.bert(**x).last_hidden_state[0]
        head = model.get_output_embeddings()
        assert torch.allclose(logits, hidden @ head.weight.T + head.bias, atol=1e-4)
        fused = copy.deepcopy(model)
        add_fused_lm_head(fused)
        labels = x["input_ids"].clone()
        out = fused(**x, labels=labels, fused_lm_head=True)
    expected = F.log_softmax(logits[:-1].float(), -1).gather(1, labels[0, 1:, None])[:, 0]
    assert torch.allclose(out.log_probs[0], expected, atol=1e-4)


def test_lora_keeps_tied_rows_trainable_and_saves(minilm, tmp_path):
    """BERT ties the decoder to the word embeddings: one SCID-row delta serves both roles (peft's
    trainable tokens, tied through ``_tied_weights_keys``), and the tie survives merge and save."""
    import copy

    model, tok = minilm
    peft_model = apply_lora(copy.deepcopy(model), ModelConfig(base="minilm", lora=True, lora_r=4))
    inp, out = peft_model.get_input_embeddings(), peft_model.get_output_embeddings()
    delta = inp.token_adapter.trainable_tokens_delta[peft_model.active_adapter]
    assert out.token_adapter.trainable_tokens_delta[peft_model.active_adapter] is delta  # one delta, both roles
    ids = tok.convert_tokens_to_ids(TOKENS)
    assert sorted(inp.token_adapter.token_indices[peft_model.active_adapter]) == sorted(ids)
    counts = trainable_parameters(peft_model)
    assert counts["trainable"] == peft_model.get_nb_trainable_parameters()[0]
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert counts["trainable"] == lora + delta.numel() and delta.shape == (len(TOKENS), 384)
    x = tok("a guitar <a_0><b_0>", return_tensors="pt", add_special_tokens=False)
    peft_model.train()
    peft_model(**x, labels=x["input_ids"]).loss.backward()
    assert delta.grad.abs().sum(1).gt(0).sum() >= 2  # <a_0>, <b_0> are read and predicted
    with torch.no_grad():
        delta += 0.5  # a trained step on the SCID rows, visible in both directions through the tie
    peft_model.eval()
    before = peft_model(**x).logits
    save_model(peft_model, tok, tmp_path / "m", *_tables())
    loaded, _, _, _ = load_model(tmp_path / "m")
    assert isinstance(loaded.cls.predictions.transform, torch.nn.Identity)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert torch.allclose(loaded.eval()(**x).logits, before, atol=1e-4)


def _tables():
    from align3gr_kit.scid import ScidTable

    return ScidTable(np.array([[0, 0], [1, 0]]), "item"), ScidTable(np.array([[0]]), "user")
