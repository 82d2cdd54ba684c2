"""The curriculum explorer (:mod:`align3gr_kit.dpo.explorer`) on the finished smoke run: per-stage top 10
equal to each stage's saved recommendations (whose target ranks agree with ``target_ranks.json``), the
pairs shown equal to ``preferences.jsonl``, and the margins equal to an independent scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from align3gr_kit.dpo import explorer
from align3gr_kit.evaluate import read_recommendations, read_target_ranks
from align3gr_kit.stages.contract import get_stage, stage_dir

DPO = ("05_sp_dpo", "06_rf_dpo")


@pytest.fixture(scope="module")
def run(smoke_run):
    cfg = smoke_run

    def artifacts(name):
        return get_stage(name).load_artifacts(stage_dir(cfg, name))

    return cfg, artifacts, explorer.load_curriculum(cfg, artifacts, DPO, n_users=4)


def test_top10_are_the_saved_recommendations_and_their_ranks_are_the_saved_ranks(run):
    cfg, artifacts, cur = run
    split = artifacts("00_data").split
    targets = dict(zip(split.test.user_id.astype(int), split.test.target.astype(int)))
    assert cur.models[0] == "SFT" and len(cur.models) == 1 + sum(len(artifacts(s).stages) for s in DPO)
    assert len(cur.users) == 4
    for stage in ("04_sft",) + DPO:
        recs, ranks = read_recommendations(stage_dir(cfg, stage)), read_target_ranks(stage_dir(cfg, stage))
        assert recs.keys() == ranks.keys() and recs
        for label, per_split in recs.items():
            for split_name, kept in per_split.items():
                truth = dict(zip(split.samples(split_name).user_id.astype(int), split.samples(split_name).target))
                want = [row.index(truth[u]) if truth[u] in row else -1 for u, row in zip(kept["user_id"], kept["items"])]
                assert want == ranks[label][split_name], (stage, label, split_name)
                assert all(len(row) == max(cfg.decode.topk) for row in kept["items"])
    saved = {"SFT": read_recommendations(stage_dir(cfg, "04_sft"))["SFT"]["test"]}
    for s in DPO:
        for name, per_split in read_recommendations(stage_dir(cfg, s)).items():
            saved[f"{explorer.DPO_LABELS[s]} {name}"] = per_split["test"]
    assert list(saved) == cur.models
    for u in cur.users:
        table = explorer.top10_table(cur, u)
        for label, kept in saved.items():
            row = kept["items"][kept["user_id"].index(u)][:10]
            shown = cur.top[(cur.top.user_id == u) & (cur.top.model == label)].sort_values("rank")
            assert shown["item"].tolist() == row
            assert shown["hit"].tolist() == [i == targets[u] for i in row]
            assert shown["liked"].notna().all()  # the smoke data has a judge (the generator)
            assert table[label].str.contains("[hit]", regex=False).sum() == (np.array(row) == targets[u]).sum()


def test_pairs_shown_are_the_preference_records_of_that_user(run):
    cfg, artifacts, cur = run
    for sub in explorer.sub_stages(cfg, artifacts, DPO):
        records = [json.loads(line) for line in (sub.folder / "preferences.jsonl").read_text().splitlines() if line]
        for u in cur.users:
            mine = [r for r in records if r["user_id"] == u]
            shown = cur.pairs[(cur.pairs.model == sub.label) & (cur.pairs.user_id == u)]
            got = [(int(c), d.rejected_item.tolist(), d.detail.tolist())
                   for (_, c), d in shown.groupby(["example", "chosen_item"], sort=True)]
            want = [(r["chosen_item"], r["rejected_items"],
                     r.get("rejected_levels") or [f"{o} shared level(s)" for o in r["overlaps"]]) for r in mine]
            assert got == want, (sub.label, u)
    assert set(cur.pairs.model) == set(cur.dpo_models)


def _hand_margins(model_dir, prompt: str, chosen: str, rejected: list[str], max_length: int) -> np.ndarray:
    """log p(chosen) - log p(rejected_j) by one plain forward per response (no collator, no packing)."""
    from align3gr_kit.model import load_model, prompt_encoder

    model, tok, items, _ = load_model(model_dir, "float32")
    prompt_ids = prompt_encoder(tok, max_length - items.levels - 1)(prompt)
    out = []
    with torch.no_grad():
        for response in [chosen] + rejected:
            resp = tok(response, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([prompt_ids + resp])).logits[0].float().log_softmax(-1)
            out.append(sum(float(logits[len(prompt_ids) + k - 1, t]) for k, t in enumerate(resp)))
    return out[0] - np.array(out[1:])


def test_margins_equal_an_independent_scoring(run):
    cfg, artifacts, cur = run
    for sub in explorer.sub_stages(cfg, artifacts, DPO):
        records = [json.loads(line) for line in (sub.folder / "preferences.jsonl").read_text().splitlines() if line]
        k = next(k for k, r in enumerate(records) if r["user_id"] in cur.users)  # one pair list per sub-stage
        r = records[k]
        shown = cur.pairs[(cur.pairs.model == sub.label) & (cur.pairs.example == k)].sort_values("j")
        before = _hand_margins(sub.reference_dir, r["prompt"], r["chosen"], r["rejected"], cfg.sft.max_length)
        after = _hand_margins(sub.policy_dir, r["prompt"], r["chosen"], r["rejected"], cfg.sft.max_length)
        np.testing.assert_allclose(shown.margin_before, before, atol=1e-4, err_msg=sub.label)
        np.testing.assert_allclose(shown.margin_after, after, atol=1e-4, err_msg=sub.label)
        assert not np.allclose(before, after)  # the sub-stage trained: its policy is not its reference
        if cur.margin_source[sub.label] == "file":  # the run's pair_margins.json against the explorer's own scoring
            ref, pol, src = explorer.substage_margins(cfg, sub, records, compute=True)
            kept = explorer.read_pair_margins(sub.folder)
            assert src == "computed" and kept["user_id"] == [r["user_id"] for r in records]
            for a, b in ((ref, kept["reference"]), (pol, kept["policy"])):
                np.testing.assert_allclose(np.concatenate(a), np.concatenate(b), atol=1e-4, err_msg=sub.label)


def test_summaries_and_figures(run):
    cfg, artifacts, cur = run
    summary = explorer.margin_summary(cur)
    assert summary["sub-stage"].tolist() == cur.dpo_models
    assert summary.pairs.tolist() == [int((cur.pairs.model == m).sum()) for m in cur.dpo_models]
    overlap = explorer.overlap_table(cur)
    first = cur.recommendations["SFT"], cur.recommendations[cur.models[1]]
    shared = [len(set(a[:10]) & set(b[:10])) for a, b in zip(first[0]["items"], first[1]["items"])]
    assert overlap.loc[0, "shared of 10"] == pytest.approx(np.mean(shared))
    matrix = explorer.overlap_matrix(cur)
    assert np.allclose(np.diag(matrix), 1.0)
    fig = explorer.top10_figure(cur)
    assert len(fig.data) == 2 * len(cur.users)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == [f"user {u}" for u in cur.users]
    assert sum(buttons[1].args[0]["visible"]) == 2 and buttons[1].args[0]["visible"][2:4] == [True, True]
    data, tok = artifacts("00_data"), artifacts("01_tokenize")
    assert len(explorer.pairs_figure(cur, data.dataset, tok.items).data) == len(cur.users)
    boxes = explorer.margins_figure(cur).data
    assert [b.name for b in boxes] == ["before (reference)", "after (policy)"]
    np.testing.assert_allclose(boxes[0].median, summary["median before"], atol=1e-4)
    np.testing.assert_allclose(boxes[1].median, summary["median after"], atol=1e-4)
