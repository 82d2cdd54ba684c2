"""Issue 37: equal budgets across the DPO variants, iterative self-play (every round regenerates from
the current policy), and the per-pair margins each round leaves (pair_margins.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from align3gr_kit.dpo.trainer import parameter_fingerprint
from align3gr_kit.model import load_model, prompt_encoder
from align3gr_kit.utils import read_json
from tests.test_dpo_pipeline import _dpo, _fake_run


def _history(cfg, stage="05_sp_dpo"):
    return read_json(cfg.run_dir / stage / "history.json")["stages"]


def test_one_stage_and_progressive_sp_have_equal_rounds_prompts_steps_and_examples(tmp_path):
    # max_steps 0: the steps are counted over each round's prompts (8 prompts, batch 4, 1 epoch -> 2)
    prog = _fake_run(tmp_path / "prog", max_steps=0)
    flat = _fake_run(tmp_path / "flat", max_steps=0, sp_progressive=False)
    _dpo(prog, "sp", evaluate_fn=None)
    _dpo(flat, "sp", evaluate_fn=None)
    a, b = _history(prog), _history(flat)
    assert [e["stage"] for e in a] == ["easy", "medium", "hard"] and [e["stage"] for e in b] == ["all-1", "all-2", "all-3"]
    for key in ("round", "rounds", "prompts", "steps", "n_examples"):
        assert [e[key] for e in a] == [e[key] for e in b], key
    assert [e["steps"] for e in a] == [2, 2, 2] and [e["prompts"] for e in a] == [8, 8, 8]
    assert [e["difficulty"] for e in b] == ["all"] * 3 and [e["difficulty"] for e in a] == ["easy", "medium", "hard"]
    # the budget reaches the manifest (and so the table's row files)
    manifest = read_json(flat.run_dir / "05_sp_dpo" / "manifest.json")["metrics"]
    assert manifest["all-2/run/steps"] == 2 and manifest["all-2/run/prompts"] == 8 and manifest["all-3/run/rounds"] == 3
    # the trainer ran the recorded steps: the last logged step of each round
    for name in ("all-1", "all-2", "all-3"):
        log = read_json(flat.run_dir / "05_sp_dpo" / name / "log_history.json")
        assert max(x.get("step", 0) for x in log) == 2


def test_self_play_without_progression_regenerates_from_the_previous_rounds_policy(tmp_path, monkeypatch):
    from align3gr_kit.dpo.pipeline import Decoder

    cfg = _fake_run(tmp_path, sp_progressive=False)
    sft = load_model(cfg.run_dir / "04_sft" / "model", "float32")[0]
    seen = []
    real = Decoder.generate

    def spy(self, model, prompts, width):
        seen.append(parameter_fingerprint(model))
        return real(self, model, prompts, width)

    monkeypatch.setattr(Decoder, "generate", spy)
    _dpo(cfg, "sp", evaluate_fn=None)
    hist = _history(cfg)
    # k = 3 rounds (the progressive variant's stages), each regenerating its beams: round 1 from the SFT
    # model, round r + 1 from round r's trained policy
    assert len(seen) == 3 and seen[0] == parameter_fingerprint(sft)
    assert seen[1:] == [hist[0]["policy_fingerprint"], hist[1]["policy_fingerprint"]]
    assert len(set(seen)) == 3


def test_softmax_dpo_baseline_also_regenerates_every_round(tmp_path, monkeypatch):
    from align3gr_kit.dpo.pipeline import Decoder

    cfg = _fake_run(tmp_path, sp_negatives="generated", sp_stages=["easy", "hard"])
    seen = []
    real = Decoder.generate
    monkeypatch.setattr(Decoder, "generate", lambda self, m, p, w: (seen.append(parameter_fingerprint(m)), real(self, m, p, w))[1])
    _dpo(cfg, "sp", evaluate_fn=None)
    hist = _history(cfg)
    assert [e["stage"] for e in hist] == ["generated-1", "generated-2"]
    assert seen == [hist[0]["reference_fingerprint"], hist[0]["policy_fingerprint"]]


def _hand_logp(model, tok, encode, prompt: str, response: str) -> float:
    """Sum of the response tokens' log-probabilities after the prompt: one plain forward pass."""
    p = list(encode(prompt))
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return float(sum(logp[len(p) - 1 + k, t] for k, t in enumerate(r)))


def test_pair_margins_recompute_from_an_independent_scoring(tmp_path):
    cfg = _fake_run(tmp_path, sp_stages=["easy", "medium"], max_prompts=4)
    _dpo(cfg, "sp", evaluate_fn=None)
    out = cfg.run_dir / "05_sp_dpo"
    hist = _history(cfg)
    for k, name in enumerate(("easy", "medium")):
        margins = read_json(out / name / "pair_margins.json")
        rows = [json.loads(x) for x in (out / name / "preferences.jsonl").read_text().splitlines()]
        assert margins["user_id"] == [r["user_id"] for r in rows]
        assert [len(m) for m in margins["reference"]] == [len(r["rejected"]) for r in rows]
        # the round's reference is the model before it: SFT for the first, the first round's policy after
        before = load_model(cfg.run_dir / "04_sft" / "model" if k == 0 else out / "easy" / "model", "float32")
        after = load_model(out / name / "model", "float32")
        for (model, tok, items, _), key in ((before, "reference"), (after, "policy")):
            encode = prompt_encoder(tok, cfg.sft.max_length - items.levels - 1)
            model.eval()
            for r, got in zip(rows, margins[key]):
                chosen = _hand_logp(model, tok, encode, r["prompt"], r["chosen"])
                want = [chosen - _hand_logp(model, tok, encode, r["prompt"], x) for x in r["rejected"]]
                assert got == pytest.approx(want, abs=1e-3)
        flat_ref = [m for row in margins["reference"] for m in row]
        flat_pol = [m for row in margins["policy"] for m in row]
        e = hist[k]
        assert e["pairs"] == len(flat_ref) and e["margin_before"] == pytest.approx(np.mean(flat_ref), abs=1e-4)
        assert e["margin_after"] == pytest.approx(np.mean(flat_pol), abs=1e-4)
        assert e["margin_up_share"] == pytest.approx(np.mean(np.array(flat_pol) > np.array(flat_ref)), abs=1e-4)
        assert e["mean_rejected"] == pytest.approx(len(flat_ref) / len(rows), abs=1e-4)
