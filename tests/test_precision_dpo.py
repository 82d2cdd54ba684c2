"""No update is lost: a DPO stage whose per-weight deltas are below bf16's rounding step, trained under
``model.dtype: bf16`` autocast, saves a model whose log-probabilities are the trained model's.

The stage is the real one (:func:`align3gr_kit.dpo.run_progressive` with LoRA and trainable SCID rows,
merged after training, saved by :func:`align3gr_kit.model.save_model`) on a tiny-llama built by
:func:`align3gr_kit.model.build_backbone`, at ``lr`` 5e-6 (``configs/gpu-qwen.yaml``'s ``dpo.lr``).
The old rule (weights loaded in bf16, the LoRA delta merged into them) is replayed on the same trained
adapter to show that the check fails for it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from align3gr_kit.config import DPOConfig, ModelConfig
from align3gr_kit.dpo import SoftmaxDPOCollator, StageSpec, run_progressive
from align3gr_kit.dpo.trainer import score_batch
from align3gr_kit.model import apply_lora, build_backbone, load_model, save_model
from align3gr_kit.scid import ScidTable

CORPUS = ["A vintage electric guitar with maple neck.", "A weighted digital piano with hammer keys.",
          "User profile: a guitarist who likes vintage gear. Next:"] * 20
MODEL = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300, lora=True,
                    lora_r=8, dtype="bf16")
LR, STEPS = 5e-6, 4
TOL = 1e-5


def response_logps(model, collator, examples) -> torch.Tensor:
    """Every chosen and rejected response's log-prob, fp32 compute (no autocast), as one float64 vector."""
    model.eval()
    with torch.no_grad():
        chosen, rejected = score_batch(model, collator(examples))
    mask = collator(examples)["rejected_mask"]
    return torch.cat([chosen, rejected[mask]]).double()


def is_adapter(name: str) -> bool:
    return "lora_" in name or "trainable_tokens" in name


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Train one DPO stage; return the start model, the unmerged trained PEFT model, the saved folder..."""
    out = tmp_path_factory.mktemp("dpo")
    items = ScidTable(np.array([[a, b, 0] for a in range(3) for b in range(3)]), "item")
    users = ScidTable(np.array([[0, 0], [1, 0], [2, 0]]), "user")
    policy, tok = build_backbone(MODEL, CORPUS, items.vocabulary() + users.vocabulary(), seed=0)
    examples = [{"prompt": f"User {users.string(k % 3)} bought {items.string((k + 4) % items.n)}. Next:",
                 "chosen": items.string(k % items.n),
                 "rejected": [items.string((k + d) % items.n) for d in (1, 2, 3)]} for k in range(6)]
    start = copy.deepcopy(policy)
    trained = []

    autocast_seen = set()

    def wrap(model):
        peft = apply_lora(model, MODEL)
        # what the training forward passes ran under (the Trainer's autocast, from model.dtype; it is
        # entered inside the model's forward, so the hook sits on an inner layer)
        peft.get_base_model().model.layers[0].register_forward_pre_hook(lambda module, args: autocast_seen.add(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None) if module.training else None)
        merge = peft.merge_and_unload

        def keep_then_merge(*args, **kwargs):  # the trained model, unmerged, just before the stage merges it
            kept = copy.deepcopy(peft)
            del kept.merge_and_unload
            trained.append(kept)
            return merge(*args, **kwargs)

        peft.merge_and_unload = keep_then_merge
        return peft

    cfg = DPOConfig(beta=0.5, batch_size=3, max_steps=STEPS, lr=LR, logging_steps=1)
    run_progressive(policy, tok, [StageSpec("stage", lambda ref: examples)], cfg, out, wrap_fn=wrap,
                    save_fn=lambda m, t, folder: save_model(m, t, folder, items, users), precision=MODEL.dtype,
                    max_length=64)
    (peft,) = trained
    assert autocast_seen == {torch.bfloat16}, f"the stage did not train under bf16 autocast: {autocast_seen}"
    # run_progressive removed accelerate's autocast wrapper before the merge: the kept copy scores in fp32
    assert "_original_forward" not in peft.__dict__
    collator = SoftmaxDPOCollator(tok, max_length=64, share_prompt=False)
    return {"start": start, "peft": peft, "folder": out / "stage" / "model", "collator": collator, "examples": examples}


def test_no_update_is_lost(stage):
    collator, examples = stage["collator"], stage["examples"]
    saved = load_model(stage["folder"], "bf16")[0]
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    # The premise: most per-weight deltas vanish when added to the bf16 copy of their weight.
    start_sd, saved_sd = stage["start"].state_dict(), saved.state_dict()
    changed = lost = 0
    for name, w in start_sd.items():
        delta = saved_sd[name] - w
        moved = delta != 0
        w16 = w.to(torch.bfloat16)
        lost += int(((w16.float() + delta).to(torch.bfloat16) == w16)[moved].sum())
        changed += int(moved.sum())
    assert changed > 10_000 and lost / changed > 0.8, (changed, lost)

    want = response_logps(stage["peft"], collator, examples)  # the unmerged trained model
    got = response_logps(saved, collator, examples)
    before = response_logps(stage["start"], collator, examples)
    assert (got - want).abs().max() < TOL
    assert (got - before).abs().max() > 10 * TOL  # the update is real, not within the tolerance


def test_the_old_bf16_merge_would_fail_the_check(stage):
    """The old rule: base weights in bf16 (``auto`` on a GPU), the trained LoRA/SCID-row delta merged
    into them by peft. Its saved model differs from what its unmerged model predicted by far more than
    the tolerance: the merge rounded the update away."""
    collator, examples = stage["collator"], stage["examples"]
    predicted, merged = copy.deepcopy(stage["peft"]), copy.deepcopy(stage["peft"])
    with torch.no_grad():
        for (name, p), (_, q) in zip(predicted.named_parameters(), merged.named_parameters()):
            if not is_adapter(name):
                p.data = p.data.to(torch.bfloat16).float()  # the bf16 base, scored in fp32
                q.data = q.data.to(torch.bfloat16)  # the bf16 base the merge writes into
    old_saved = merged.merge_and_unload()
    assert {p.dtype for p in old_saved.parameters()} == {torch.bfloat16}
    want = response_logps(predicted, collator, examples)
    got = response_logps(old_saved.float(), collator, examples)  # bf16 values, fp32 compute
    assert (got - want).abs().max() > 10 * TOL
