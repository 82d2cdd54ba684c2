"""model.keep_layers (a depth-pruned backbone) and SFT's label-only logits, on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from align3gr_kit.config import RunConfig
from align3gr_kit.model import apply_lora, build_backbone, encode_prompts, keep_decoder_layers, left_pad
from align3gr_kit.train.sft import CompletionCollator

TOKENS = [f"<a_{i}>" for i in range(4)] + [f"<b_{i}>" for i in range(4)]
CORPUS = [f"user likes <a_{i % 4}><b_{(i * 3) % 4}> and the guitar {i}" for i in range(40)]


def tiny(keep=0, layers: int = 4):
    cfg = RunConfig.from_dict({"seed": 0, "model": {"base": "tiny-llama", "num_layers": layers, "hidden_size": 32,
                                                    "num_heads": 4, "keep_layers": keep, "lora_r": 4}})
    model, tok = build_backbone(cfg.model, CORPUS, TOKENS, seed=0)
    return cfg, model.eval(), tok


def batch(tok):
    return left_pad(encode_prompts(tok, ["user likes <a_1><b_2> and", "the guitar 3 <a_0>"]), tok.pad_token_id)


def test_pruned_model_matches_an_independent_smaller_model_and_reloads(tmp_path):
    _, full, tok = tiny()
    _, pruned, _ = tiny(keep=[0, 2])
    assert pruned.config.num_hidden_layers == 2 and pruned.config.align3gr_kept_layers == [0, 2]
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    # reference: a plain 2-layer Llama holding layers 0 and 2 of the full model's weights
    ref = LlamaForCausalLM(type(full.config)(**{**full.config.to_dict(), "num_hidden_layers": 2})).eval()
    state = {k.replace("layers.2.", "layers.1."): v for k, v in full.state_dict().items()
             if not k.startswith(("model.layers.1.", "model.layers.3."))}
    ref.load_state_dict(state)
    ids, mask = batch(tok)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = pruned(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(got, want)
        pruned.save_pretrained(tmp_path)
        again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert again.config.num_hidden_layers == 2
        assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, got)


def test_keeping_every_layer_or_the_first_k_is_consistent():
    _, full, tok = tiny()
    _, all_kept, _ = tiny(keep=[0, 1, 2, 3])
    _, first3, _ = tiny(keep=3)
    _, list3, _ = tiny(keep=[0, 1, 2])
    ids, mask = batch(tok)
    with torch.no_grad():
        assert torch.equal(all_kept(input_ids=ids, attention_mask=mask).logits, full(input_ids=ids, attention_mask=mask).logits)
        assert torch.equal(first3(input_ids=ids, attention_mask=mask).logits, list3(input_ids=ids, attention_mask=mask).logits)
    for bad in (5, [1, 0], [0, 4]):
        with pytest.raises(ValueError, match="model.keep_layers"):
            keep_decoder_layers(tiny()[1], bad)


def test_kv_cache_decoding_equals_no_cache_on_a_pruned_model():
    _, pruned, tok = tiny(keep=[1, 3])
    ids, mask = batch(tok)
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tok.pad_token_id, "attention_mask": mask}
    with torch.no_grad():
        cached = pruned.generate(ids, use_cache=True, output_scores=True, return_dict_in_generate=True, **kw)
        plain = pruned.generate(ids, use_cache=False, output_scores=True, return_dict_in_generate=True, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    for a, b in zip(cached.scores, plain.scores):
        assert torch.allclose(a, b, atol=1e-5)


def test_label_only_logits_give_the_full_loss_and_gradients():
    cfg, model, tok = tiny(keep=3)
    torch.manual_seed(0)
    model = apply_lora(model, cfg.model, dropout=0.0)
    prompts = ["user likes <a_1><b_2> and", "the guitar 3 <a_0> and the guitar 12 user likes", "x"]
    from align3gr_kit.model import encode_sft_batch

    enc = encode_sft_batch(tok, prompts, ["<a_2><b_1>", "<a_3>", "<a_0><b_0> guitar"], 64)
    rows = [{"input_ids": i, "completion_mask": m} for i, m in zip(enc["input_ids"], enc["completion_mask"])]
    full = CompletionCollator(tok.pad_token_id)(rows)
    label_only = CompletionCollator(tok.pad_token_id, logits_to_keep=True)(rows)
    n_items = int((full["labels"][:, 1:] != -100).sum())
    assert label_only["labels"].numel() == n_items < full["input_ids"].numel()

    def loss_and_grads(b):
        model.zero_grad(set_to_none=True)
        out = model(**b, num_items_in_batch=torch.tensor(n_items))
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (a, ga), (b, gb) = loss_and_grads(full), loss_and_grads(label_only)
    # independent reference: cross-entropy of the full logits at the label positions, by hand
    with torch.no_grad():
        logits = model(**{k: full[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
        lab = full["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        ref = -logp[lab != -100].gather(1, lab[lab != -100][:, None]).sum() / n_items
    assert abs(float(a) - float(b)) < 1e-5 and abs(float(ref) - float(b)) < 1e-5
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6, rtol=1e-4), n


def test_depth_table_rows_differ_only_in_keep_layers():
    from align3gr_kit.report.specs import table_rungs

    rungs = table_rungs("depth")
    assert [r.overrides["model.keep_layers"] for r in rungs] == [30, 15, 10, 6]
    cfgs = [RunConfig.from_yaml("configs/default.yaml", overrides=r.overrides).to_dict() for r in rungs]
    flat = [{f"{s}.{k}": v for s, d in c.items() if isinstance(d, dict) for k, v in d.items()} for c in cfgs]
    differing = {k for f in flat[1:] for k in f if f[k] != flat[0][k]}
    assert differing == {"model.keep_layers"}
    assert flat[0]["sft.max_minutes"] > 0 and all(r.last_stage == "04_sft" for r in rungs)


def test_wall_time_budget_stops_sft_and_counts_examples(tmp_path):
    from datasets import Dataset

    from align3gr_kit.train.sft import train_sft

    cfg = RunConfig.from_dict({"seed": 0, "runs_dir": str(tmp_path),
                               "model": {"base": "tiny-llama", "num_layers": 2, "hidden_size": 32, "num_heads": 4},
                               "sft": {"batch_size": 4, "max_steps": 50, "max_minutes": 1e-6, "logging_steps": 1,
                                       "save_steps": 0}})
    _, model, tok = tiny(layers=2)
    data = Dataset.from_list([{"prompt": f"user likes {i}", "completion": f"<a_{i % 4}><b_{i % 3}>"} for i in range(16)])
    res = train_sft(cfg, model.train(), tok, data, tmp_path / "out")
    assert res["stopped_by_time"] and res["steps"] == 1 and res["examples_seen"] == 4
