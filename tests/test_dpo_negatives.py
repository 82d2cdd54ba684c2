"""SP-DPO negatives: Easy/Medium/Hard by shared SCID prefix, catalogue fill, similarity variant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.dpo import NegativeSampler, build_sp_preferences, prefix_grades, shared_prefix
from align3gr_kit.dpo.negatives import similarity_grades
from align3gr_kit.dpo.preferences import sample_prompts
from align3gr_kit.scid import ScidTable


def _catalogue(n: int = 300, levels: int = 3, codes: int = 4, seed: int = 0) -> ScidTable:
    rng = np.random.default_rng(seed)
    all_codes = np.array(np.meshgrid(*[np.arange(codes)] * levels, indexing="ij")).reshape(levels, -1).T
    return ScidTable(all_codes[rng.choice(len(all_codes), size=min(n, len(all_codes)), replace=False)], "item")


def test_shared_prefix_by_hand():
    codes = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 3], [0, 2, 3], [1, 2, 3]])
    assert shared_prefix(codes, np.array([1, 2, 3])).tolist() == [3, 2, 1, 0, 3]
    grades = prefix_grades(codes[:4], 0)
    assert grades.tolist() == [-1, 2, 1, 0]  # itself, hard, medium, easy


@pytest.mark.parametrize("difficulty,overlap", [("easy", 0), ("medium", 1), ("hard", 2)])
def test_negatives_have_exact_overlap(difficulty, overlap):
    table = _catalogue()
    sampler = NegativeSampler(table.codes)
    rng = np.random.default_rng(0)
    for chosen in range(0, table.n, 17):
        beams = rng.permutation(table.n)[:20]
        beams[0] = chosen  # the ground truth among the beams is never a negative
        neg, from_beams = sampler.pick(chosen, beams, difficulty, 5, np.random.default_rng(1))
        assert chosen not in neg and len(set(neg)) == len(neg)
        assert shared_prefix(table.codes[neg], table.codes[chosen]).tolist() == [overlap] * len(neg)
        # the beam items of that difficulty come first, in beam order
        beam_ok = [int(b) for b in beams if b != chosen and shared_prefix(table.codes[[b]], table.codes[chosen])[0] == overlap]
        assert neg[:from_beams] == beam_ok[:from_beams] and from_beams == min(5, len(beam_ok))


def test_catalogue_fill_is_seeded_and_runs_out_without_repeats():
    table = _catalogue()
    sampler = NegativeSampler(table.codes)
    a = sampler.pick(3, None, "medium", 8, np.random.default_rng(7))
    b = sampler.pick(3, None, "medium", 8, np.random.default_rng(7))
    assert a == b and a[1] == 0
    # 4 codes per level: at most 3 items share exactly 2 levels with the chosen one -> fewer, never repeated
    hard, _ = sampler.pick(3, None, "hard", 20, np.random.default_rng(0))
    n_pool = int((prefix_grades(table.codes, 3) == 2).sum())
    assert len(hard) == n_pool <= 3 and len(set(hard)) == len(hard)


def test_all_and_random_modes():
    table = _catalogue()
    sampler = NegativeSampler(table.codes)
    beams = np.array([5, 6, 7, -1, -1])
    neg, from_beams = sampler.pick(5, beams, "all", 6, np.random.default_rng(0))
    assert neg[:2] == [6, 7] and from_beams == 2 and 5 not in neg and len(neg) == 6
    neg, from_beams = sampler.pick(5, beams, "random", 6, np.random.default_rng(0))
    assert from_beams == 0 and 5 not in neg and len(set(neg)) == 6
    with pytest.raises(ValueError, match="difficulty"):
        sampler.pick(5, beams, "extreme", 6, np.random.default_rng(0))


def test_two_level_scids_cannot_have_hard_negatives():
    with pytest.raises(ValueError, match="tokenizer.levels >= 3"):
        NegativeSampler(np.array([[0, 1], [1, 1]]))


def test_similarity_terciles():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(90, 8))
    grades = similarity_grades(emb / np.linalg.norm(emb, axis=1, keepdims=True), 0)
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (emb[0] / np.linalg.norm(emb[0]))
    assert grades[0] == -1
    assert sorted(np.bincount(grades[1:]).tolist()) == [29, 30, 30]  # 89 other items in thirds
    # every easy item is less similar than every hard item
    assert sims[grades == 0].max() < sims[grades == 2].min()
    sampler = NegativeSampler(np.zeros((90, 3), dtype=int) + np.arange(90)[:, None], "similarity", emb)
    hard, _ = sampler.pick(0, None, "hard", 10, np.random.default_rng(0))
    assert set(hard) <= set(np.flatnonzero(grades == 2).tolist())


def test_build_sp_preferences_strings_and_overlaps():
    table = _catalogue()
    train = pd.DataFrame({"user_id": [0, 0, 1], "history": [[1], [1, 2], [4]], "target": [2, 9, 11]})
    samples = sample_prompts(train, 0, 0, "sp/easy")
    assert samples["t"].tolist() == [1, 2, 1]
    prompts = [f"p{i}" for i in range(3)]
    cands = np.tile(np.arange(20), (3, 1))
    ex = build_sp_preferences(samples, prompts, table, NegativeSampler(table.codes), "easy", 4, 0, cands)
    assert len(ex) == 3
    for e, target in zip(ex, [2, 9, 11]):
        assert e["chosen"] == table.string(target) and len(e["rejected"]) == 4
        assert e["rejected"] == [table.string(i) for i in e["rejected_items"]]
        assert e["overlaps"] == [0, 0, 0, 0]
    again = build_sp_preferences(samples, prompts, table, NegativeSampler(table.codes), "easy", 4, 0, cands)
    assert again == ex


def test_uniqueness_level_never_makes_a_pair_hard():
    # three semantic levels + the collision-resolving level (append_unique_level): item 1 differs from
    # item 0 only in that last level, i.e. it IS item 0 to the tokenizer.
    from align3gr_kit.tokenizer.unique import append_unique_level

    raw = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 0], [1, 0, 0], [0, 0, 0]])
    codes = append_unique_level(raw)
    assert codes[:2, 3].tolist() == [0, 1]  # the siblings differ only in the uniqueness digit
    # counted over all four levels, the sibling would be a "hard" negative (3 shared levels < 4)
    assert prefix_grades(codes, 0).tolist() == [-1, 2, 2, 1, 0]
    # over the semantic levels it is no negative at all; item 2 (two shared) is the only hard one
    assert prefix_grades(codes, 0, semantic_levels=3).tolist() == [-1, -1, 2, 1, 0]
    sampler = NegativeSampler(codes, semantic_levels=3)
    neg, from_beams = sampler.pick(0, np.array([1, 2, 3, 4]), "hard", 5, np.random.default_rng(0))
    assert neg == [2] and from_beams == 1
    assert sampler.overlap([1, 2, 3, 4], 0) == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="semantic level"):
        NegativeSampler(codes, semantic_levels=2)


def test_generated_negatives_come_from_the_beam_and_fill_only_when_it_runs_short():
    table = _catalogue()
    sampler = NegativeSampler(table.codes)
    beam = np.array([5, 0, 9, 12, 40, 41, 42, 43, -1, -1])
    neg, from_beams = sampler.pick(0, beam, "generated", 4, np.random.default_rng(3))
    assert from_beams == 4 and set(neg) <= set(beam[beam >= 0].tolist()) - {0}
    again, _ = sampler.pick(0, beam, "generated", 4, np.random.default_rng(3))
    assert again == neg  # seeded
    # a uniform draw from the beam, not its head: over many draws every beam item appears
    seen = {x for s in range(50) for x in sampler.pick(0, beam, "generated", 4, np.random.default_rng(s))[0]}
    assert seen == {5, 9, 12, 40, 41, 42, 43}
    # 7 usable beam items for 10 negatives: 7 from the beam, 3 from the catalogue, counted apart
    neg, from_beams = sampler.pick(0, beam, "generated", 10, np.random.default_rng(0))
    assert from_beams == 7 and len(neg) == 10 and 0 not in neg and set(neg[:7]) == {5, 9, 12, 40, 41, 42, 43}


def test_sp_preference_stats_counts_the_beam_share():
    from align3gr_kit.dpo.preferences import sp_preference_stats

    examples = [{"rejected": ["a", "b", "c"], "from_beams": 2, "from_ranked": 1, "overlaps": [0, 0, 1]},
                {"rejected": ["a"], "from_beams": 0, "overlaps": [2]}]
    st = sp_preference_stats(examples, n_prompts=3)
    assert st == {"prompts": 3, "examples": 2, "rejected": 4, "from_beams": 2, "from_ranked": 1, "from_catalogue": 1,
                  "from_beams_share": 0.5, "from_policy_share": 0.75, "overlap/0": 2, "overlap/1": 1, "overlap/2": 1}


def test_short_beams_are_completed_by_the_policys_best_scored_items_before_the_catalogue():
    table = _catalogue()
    sampler = NegativeSampler(table.codes)
    samples = pd.DataFrame({"user_id": [0], "history": [[1, 2]], "target": [0]})
    medium = np.flatnonzero(prefix_grades(table.codes, 0) == 1)
    beam = np.array([medium[0], -1])  # the beam found one medium item
    pool_seen = []

    def rank_fn(queries):  # one call for every prompt's pool; the "policy" prefers higher item ids
        pool_seen.extend(list(items) for _, items in queries)
        return [np.asarray(items, dtype=float) for _, items in queries]

    ex = build_sp_preferences(samples, ["p"], table, sampler, "medium", 4, 0, beam[None, :], rank_fn, rank_pool=100)[0]
    assert ex["rejected_items"][0] == medium[0] and ex["from_beams"] == 1 and ex["from_ranked"] == 3
    assert ex["rejected_items"][1:] == sorted(set(medium) - {medium[0]}, reverse=True)[:3]
    assert medium[0] not in pool_seen[0] and set(pool_seen[0]) == set(medium) - {medium[0]}
    # a pool of 2 scored items: 2 ranked, then 1 uniform catalogue fill (the last resort)
    ex = build_sp_preferences(samples, ["p"], table, sampler, "medium", 4, 0, beam[None, :], rank_fn, rank_pool=2)[0]
    assert (ex["from_beams"], ex["from_ranked"], len(ex["rejected"])) == (1, 2, 4)
    # the user's training items are never rejected, ranked or not (issue 37)
    banned = {0: set(medium[1:3].tolist())}
    ex = build_sp_preferences(samples, ["p"], table, sampler, "medium", 4, 0, beam[None, :], rank_fn, rank_pool=100,
                              banned=banned)[0]
    assert not banned[0] & set(ex["rejected_items"]) and len(ex["rejected"]) == 4
    # without a rank function the old rule: beam then catalogue
    ex = build_sp_preferences(samples, ["p"], table, sampler, "medium", 4, 0, beam[None, :])[0]
    assert (ex["from_beams"], ex["from_ranked"]) == (1, 0)
