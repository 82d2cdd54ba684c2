"""run_dpo end to end on a fake run directory (tiny dataset with ratings, tiny SFT model)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from align3gr_kit.config import DPOConfig, RunConfig
from align3gr_kit.data.schema import DataError, RecDataset, make_interactions, make_items, make_users
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.dpo import rf_stage_names, run_dpo, shared_prefix, sp_stage_names
from align3gr_kit.feedback import FeedbackOracle, rating_level
from align3gr_kit.model import load_model, save_model
from align3gr_kit.data.artifacts import DataArtifacts
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts
from align3gr_kit.scid import ScidTable
from align3gr_kit.utils import read_json


def _world(n_users: int = 8, n_items: int = 40, per_user: int = 9, ratings: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.array(np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij")).reshape(3, -1).T
    items = ScidTable(grid[rng.choice(len(grid), n_items, replace=False)], "item")
    users = ScidTable(np.stack([np.arange(n_users) % 4, np.arange(n_users) // 4], 1), "user")
    u = np.repeat(np.arange(n_users), per_user)
    i = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    t = np.tile(np.arange(per_user), n_users)
    r = rng.integers(1, 6, size=len(u)) if ratings else None
    ds = RecDataset("tiny", make_items([{"raw_id": str(k), "title": f"t{k}"} for k in range(n_items)], "t"),
                    make_users([{"raw_id": str(k)} for k in range(n_users)], "t"), make_interactions(u, i, t, r), "t")

    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: k for k, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", "user", "history", ","])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_tokens(items.vocabulary() + users.vocabulary())
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                                         pad_token_id=tok.pad_token_id, initializer_range=0.3))
    return ds, items, users, tok, model


def _fake_run(tmp_path, ratings: bool = True, **dpo) -> RunConfig:
    """Upstream stages 00/01/04 written the way their notebooks write them."""
    cfg = RunConfig(run_name="t", runs_dir=str(tmp_path), seed=0)
    cfg.dpo = DPOConfig(**{"n_rejected": 3, "batch_size": 4, "max_steps": 2, "max_prompts": 8, "lr": 1e-2,
                           "logging_steps": 1, **dpo})
    cfg.decode.beam_width = 6
    cfg.decode.topk = [1, 5]
    cfg.decode.max_eval_users = 4
    cfg.model.dtype = "float32"
    ds, items, users, tok, model = _world(ratings=ratings)
    s = StageRun(cfg, "00_data")
    DataArtifacts(ds, leave_one_out(ds, 20)).save(s.dir)
    s.finish()
    s = StageRun(cfg, "01_tokenize")
    emb = np.random.default_rng(0).normal(size=(items.n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    TokenizeArtifacts(items, users, items.codes, users.codes, emb, np.zeros((users.n, 8)), [], {}).save(s.dir)
    s.finish()
    s = StageRun(cfg, "04_sft")
    save_model(model, tok, s.path("model"), items, users)
    s.finish()
    return cfg


def _dpo(cfg, kind: str, **kw) -> dict:
    """The DPO stage the way ``run_stage`` runs it: a StageRun, run_dpo, finish."""
    st = StageRun(cfg, {"sp": "05_sp_dpo", "rf": "06_rf_dpo"}[kind])
    out = run_dpo(cfg, kind, st, **kw)
    st.finish(out["metrics"])
    return out


def _count_valid_metric(model) -> dict:
    return {"valid": {"n_params": float(sum(p.numel() for p in model.parameters()))}}


class _ItemOracle(FeedbackOracle):
    """Grades item i as 1 + i % 5 stars for every user: this world's 56 training ratings are too few for the
    simulator's SGD to move far from the mean (the simulator is tested in test_feedback_simulator.py)."""

    def level(self, user_id, item_id):
        return rating_level(1 + item_id % 5)


def test_sp_then_rf_end_to_end(tmp_path, monkeypatch):
    cfg = _fake_run(tmp_path)
    sp = _dpo(cfg, "sp", evaluate_fn=_count_valid_metric)
    assert sp["stages"] == ["easy", "medium", "hard"] and [h["stage"] for h in sp["history"]] == sp["stages"]
    sp_dir = cfg.run_dir / "05_sp_dpo"
    items = ScidTable.load(cfg.run_dir / "01_tokenize" / "item_scids.json")
    for k, name in enumerate(sp["stages"]):
        rows = [json.loads(x) for x in (sp_dir / name / "preferences.jsonl").read_text().splitlines()]
        # 40 of 64 possible SCIDs: an item has at most 3 catalogue neighbours sharing two levels, so
        # hard examples may hold fewer than N negatives (never repeats); easy ones always have N
        assert rows and all(1 <= len(r["rejected"]) <= 3 for r in rows)
        assert name != "easy" or all(len(r["rejected"]) == 3 for r in rows)
        for r in rows:
            n = len(r["rejected_items"])
            assert shared_prefix(items.codes[r["rejected_items"]], items.codes[r["chosen_item"]]).tolist() == [k] * n
        assert (sp_dir / name / "model" / "item_scids.json").exists()
    # the final policy is reachable as 05_sp_dpo/model, and loads with the model package
    model, _, _, _ = load_model(sp_dir / "model", "float32")
    final = load_model(sp_dir / "hard" / "model", "float32")[0]
    for a, b in zip(model.parameters(), final.parameters()):
        assert torch.equal(a, b)
    manifest = read_json(sp_dir / "manifest.json")
    for name in sp["stages"]:  # the share of negatives from the policy's own beam, per stage, in the manifest
        rows = [json.loads(x) for x in (sp_dir / name / "preferences.jsonl").read_text().splitlines()]
        n_rej, n_beam = sum(len(r["rejected"]) for r in rows), sum(r["from_beams"] for r in rows)
        n_ranked = sum(r["from_ranked"] for r in rows)
        assert manifest["metrics"][f"{name}/preferences/from_beams_share"] == pytest.approx(round(n_beam / n_rej, 4))
        assert manifest["metrics"][f"{name}/preferences/from_catalogue"] == n_rej - n_beam - n_ranked
    _check_policy_scores(cfg, sp_dir)
    assert manifest["metrics"]["hard/valid/n_params"] > 0 and "easy/train/rewards/accuracies" in manifest["metrics"]
    hist = read_json(sp_dir / "history.json")
    assert hist["stages"][1]["reference_fingerprint"] == hist["stages"][0]["policy_fingerprint"]
    # what each stage trained on and with what batch: one process here (tests/test_distributed.py: two)
    for e in hist["stages"]:
        assert e["world_size"] == 1 and e["global_batch"] == cfg.dpo.batch_size * cfg.dpo.grad_accum
        assert e["lr"] == cfg.dpo.lr and re.fullmatch(r"[0-9a-f]{16}", e["examples_sha256"])
    assert len({e["examples_sha256"] for e in hist["stages"]}) == 3

    _check_figures(cfg, sp)

    monkeypatch.setattr("align3gr_kit.feedback.training_oracle", lambda kind, dataset, seed=0: _ItemOracle())
    rf = _dpo(cfg, "rf")  # the default evaluator: Recall/NDCG on valid and test (align3gr_kit.evaluate)
    assert rf["stages"] == ["easy", "hard"] and rf["start_model"].endswith("05_sp_dpo/hard/model")
    for label in ("start", "easy", "hard", "final"):
        for split_name in ("valid", "test"):
            assert 0.0 <= rf["metrics"][f"{label}/{split_name}/recall@5"] <= 1.0
            assert rf["metrics"][f"{label}/{split_name}/users"] == 4 and rf["metrics"][f"{label}/{split_name}/invalid"] == 0
    rf_hist = read_json(cfg.run_dir / "06_rf_dpo" / "history.json")
    # every stage's per-user target ranks are kept (the start model's, evaluated here first, are not a stage's)
    kept = read_json(cfg.run_dir / "06_rf_dpo" / "target_ranks.json")
    assert sorted(kept) == ["easy", "hard"]
    for e in rf_hist["stages"]:
        for split_name in ("valid", "test"):
            ranks = np.asarray(kept[e["stage"]][split_name])
            assert len(ranks) == 4 and "target_ranks" not in e["metrics"][split_name]
            assert e["metrics"][split_name]["recall@5"] == pytest.approx(((ranks >= 0) & (ranks < 5)).mean())
    assert rf_hist["stages"][0]["reference_fingerprint"] == hist["stages"][-1]["policy_fingerprint"]
    from align3gr_kit.dpo.preferences import held_out_items, training_items

    split = DataArtifacts.load(cfg.run_dir / "00_data").split
    held, train_items = held_out_items(split), training_items(split)
    # the training oracle's agreement with the judge (here a kNN on the other half of the ratings) is recorded
    for e in rf_hist["stages"]:
        assert e["judge_pairs"] > 0 and 0.0 <= e["judge_agreement"] <= 1.0 and -1.0 <= e["judge_kappa"] <= 1.0
    for name, level in (("easy", "disliked"), ("hard", "neutral")):
        rows = [json.loads(x) for x in (cfg.run_dir / "06_rf_dpo" / name / "preferences.jsonl").read_text().splitlines()]
        assert rows and all(set(r["rejected_levels"]) == {level} for r in rows)
        # Fig. 2's chosen: a shown item graded liked (_ItemOracle: item % 5 >= 3), never a held-out item nor
        # another training item; rejected never the chosen item or a training item of the user
        for r in rows:
            assert 1 + r["chosen_item"] % 5 >= 4 and r["chosen_item"] not in held[r["user_id"]]
            assert r["chosen_item"] == r["target"] or r["chosen_item"] not in train_items[r["user_id"]]
            assert r["chosen_item"] not in r["rejected_items"] and not train_items[r["user_id"]] & set(r["rejected_items"])
        assert rf["metrics"][f"{name}/preferences/from_beams_share"] == 1.0


def _check_policy_scores(cfg, sp_dir):
    """The scores that rank a short beam's completion are the constrained beam search's own scores."""
    from align3gr_kit.decoding import constrained_beam_search, trie_from_scids
    from align3gr_kit.dpo.negatives import response_logps
    from align3gr_kit.model import prompt_encoder
    from align3gr_kit.model.encoding import left_pad

    model, tok, items, _ = load_model(sp_dir / "model", "float32")
    prompt = json.loads((sp_dir / "easy" / "preferences.jsonl").read_text().splitlines()[0])["prompt"]
    encode = prompt_encoder(tok, cfg.sft.max_length - items.levels - 1)
    ids, mask = left_pad([encode(prompt)], tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    res = constrained_beam_search(model, ids, mask, trie_from_scids(items, tok), beam_width=5)
    top = res.items[0].tolist()
    got = response_logps(model, tok, prompt, top, items, encode, cfg.sft.max_length, batch_size=2)
    assert np.allclose(got, res.scores[0].float().numpy(), atol=1e-4)


def _check_figures(cfg, sp):
    from align3gr_kit.dpo import figures

    out = cfg.run_dir / "05_sp_dpo"
    from align3gr_kit.dpo.artifacts import DPOArtifacts

    art = DPOArtifacts.load(out)
    ds = RecDataset.load(cfg.run_dir / "00_data" / "dataset")
    items = ScidTable.load(cfg.run_dir / "01_tokenize" / "item_scids.json")
    assert art.stages == sp["stages"]
    pairs = figures.example_pairs(art, ds, items, per_stage=1, rejected=2)
    assert pairs.role.tolist() == ["chosen", "rejected", "rejected"] * 3
    assert pairs.detail[pairs.stage == "medium"].tolist()[1:] == ["1 shared level(s)"] * 2
    first = art.preferences("easy")[0]
    assert pairs.item.iloc[0] == f"{ds.items.title.iloc[first['chosen_item']]} {first['chosen']}"
    neg = figures.negatives_table(art)
    assert neg["mean shared levels"].tolist() == [0.0, 1.0, 2.0] and (neg.prompts == 8).all()
    curves = figures.training_curves(art)
    # 2 steps per stage, logged every step: run_step runs 1..6 across the three stages
    assert sorted(curves[curves.metric == "loss"].run_step) == [1, 2, 3, 4, 5, 6]
    assert len(figures.curves_figure(curves, "t").data) == 9
    table = figures.metrics_table({"start": None, "stages": [
        {"stage": "easy", "metrics": {"valid": {"recall@5": 0.5, "ndcg@10": 0.25}}}]})
    assert table.to_dict("records") == [{"model": "easy", "valid recall@5": 0.5, "valid ndcg@10": 0.25}]
    assert len(figures.metrics_figure(table, "t").data) == 1


def test_rf_without_ratings_names_loaders(tmp_path):
    cfg = _fake_run(tmp_path, ratings=False, sp_stages=[])
    with pytest.raises(DataError, match="ml-100k"):
        _dpo(cfg, "rf", evaluate_fn=None)


def test_ablation_stage_names():
    assert sp_stage_names(DPOConfig()) == ["easy", "medium", "hard"]
    # without progression, as many rounds as the progressive variant (issue 37: equal budgets)
    assert sp_stage_names(DPOConfig(sp_progressive=False)) == ["all-1", "all-2", "all-3"]
    assert sp_stage_names(DPOConfig(sp_negatives="random")) == ["random-1", "random-2", "random-3"]
    assert sp_stage_names(DPOConfig(sp_negatives="generated", sp_stages=["easy"])) == ["generated"]
    assert sp_stage_names(DPOConfig(sp_stages=[])) == []
    assert rf_stage_names(DPOConfig()) == ["easy", "hard"]
    assert rf_stage_names(DPOConfig(rf_progressive=False)) == ["all-1", "all-2"]
    with pytest.raises(ValueError, match="dpo.sp_stages"):
        sp_stage_names(DPOConfig(sp_stages=["easy", "extreme"]))
    with pytest.raises(ValueError, match="dpo.sp_negatives"):
        sp_stage_names(DPOConfig(sp_negatives="beams"))


def test_lora_stages_merge_and_chain(tmp_path):
    cfg = _fake_run(tmp_path, sp_stages=["easy", "medium"], max_prompts=4)
    cfg.model.lora = True
    cfg.model.lora_r = 4
    sft = load_model(cfg.run_dir / "04_sft" / "model", "float32")[0]
    _dpo(cfg, "sp", evaluate_fn=None)
    hist = read_json(cfg.run_dir / "05_sp_dpo" / "history.json")
    assert hist["stages"][1]["reference_fingerprint"] == hist["stages"][0]["policy_fingerprint"]
    easy = load_model(cfg.run_dir / "05_sp_dpo" / "easy" / "model", "float32")[0]
    # merged plain models (no adapter left) whose SCID embedding rows moved away from SFT's
    assert not any("lora" in k for k in easy.state_dict())
    assert not torch.equal(easy.get_input_embeddings().weight, sft.get_input_embeddings().weight)
    assert not torch.equal(easy.get_output_embeddings().weight, sft.get_output_embeddings().weight)


def test_similarity_difficulty_reads_sc_embeddings(tmp_path):
    from align3gr_kit.dpo.negatives import similarity_grades

    cfg = _fake_run(tmp_path, sp_stages=["hard"], sp_difficulty="similarity", max_prompts=4)
    emb = TokenizeArtifacts.load(cfg.run_dir / "01_tokenize").item_sc
    _dpo(cfg, "sp", evaluate_fn=None)
    rows = [json.loads(x) for x in (cfg.run_dir / "05_sp_dpo" / "hard" / "preferences.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:  # every negative lies in the most similar third of the catalogue
        assert set(r["rejected_items"]) <= set(np.flatnonzero(similarity_grades(emb, r["chosen_item"]) == 2).tolist())


def test_preference_stats_table_has_one_row_per_stage_and_only_preference_statistics():
    from align3gr_kit.dpo.figures import preference_stats_table

    metrics = {"easy/preferences/examples": 3.0, "easy/preferences/skipped": 1.0, "hard/preferences/examples": 2.0,
               "easy/valid/recall@10": 0.5, "start/test/ndcg@10": 0.1}
    t = preference_stats_table(metrics).set_index("stage")
    assert list(t.index) == ["easy", "hard"] and sorted(t.columns) == ["examples", "skipped"]
    assert t.loc["easy", "examples"] == 3.0 and t.loc["hard", "examples"] == 2.0 and t.loc["hard"].isna()["skipped"]


def test_stage_pairs_shows_the_references_beams_and_scores_with_the_reference():
    """One stage's recipe: the method's prompts, the beam the method asks for (none for ``random``),
    scores of the row's prompt under the same reference, in that order."""
    from align3gr_kit.dpo.pipeline import stage_pairs

    calls = []

    class Decoder:
        def generate(self, model, prompts, width):
            calls.append(("generate", model, tuple(prompts), width))
            return np.arange(len(prompts) * width).reshape(len(prompts), width)

        def score(self, model, queries):
            calls.extend(("score", model, prompt, tuple(items)) for prompt, items in queries)
            return [-np.arange(len(items), dtype=float) for _, items in queries]

    class Method:
        def __init__(self, width):
            self.width = width

        def prompts(self, stage):
            return f"samples/{stage}", [f"{stage}/p0", f"{stage}/p1"]

        def beam_width(self, stage):
            return self.width

        def pairs(self, stage, samples, prompts, shown, score):
            return [{"samples": samples, "shown": shown, "scores": score([(1, [7, 8])])[0].tolist()}]

    reference = object()
    (out,) = stage_pairs(Method(3), "hard", Decoder(), reference)
    assert out["samples"] == "samples/hard" and out["shown"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out["scores"] == [0.0, -1.0]
    assert calls == [("generate", reference, ("hard/p0", "hard/p1"), 3), ("score", reference, "hard/p1", (7, 8))]
    calls.clear()
    (out,) = stage_pairs(Method(None), "random", Decoder(), reference)
    assert out["shown"] is None and [c[0] for c in calls] == ["score"]


def test_stage_entry_counts_the_examples_it_trained_on():
    from align3gr_kit.dpo.progressive import TrainedStage, stage_entry

    examples = [{"rejected": ["a", "b", "c"], "from_beams": 2}, {"rejected": ["d"], "from_beams": 0},
                {"rejected": ["e", "f"]}]
    run = {"steps": 4, "world_size": 2, "global_batch": 8, "lr": 0.01, "train_loss": 0.5}
    trained = TrainedStage(torch.nn.Linear(1, 1), "ab" * 8, "cd" * 8, [{"loss": 1.0}, {"loss": 0.25, "epoch": 1}], run)
    entry = stage_entry("easy", examples, trained, "ef" * 8, {"valid": {"recall@5": 0.5}}, {"round": 1, "prompts": 4})
    # 6 rejected over 3 examples; 2 of the 6 from the beams
    assert entry["mean_rejected"] == 2.0 and entry["from_beams_share"] == round(2 / 6, 4)
    assert entry["n_examples"] == 3 and entry["train"] == {"loss": 0.25} and entry["model_dir"] == "easy/model"
    # history.json's layout: the keys in the order readers and diffs of older runs expect
    assert list(entry) == ["stage", "n_examples", "mean_rejected", "from_beams_share", "examples_sha256", "steps",
                           "world_size", "global_batch", "lr", "train_loss", "train", "reference_fingerprint",
                           "policy_fingerprint", "model_dir", "metrics", "round", "prompts"]
    assert (entry["reference_fingerprint"], entry["policy_fingerprint"]) == ("ef" * 8, "cd" * 8)
