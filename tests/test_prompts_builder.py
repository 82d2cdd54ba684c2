"""Multi-task SFT prompts: tasks, paraphrases, the user-SCID switch, task mix, and leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.config import PromptConfig
from align3gr_kit.data.schema import RecDataset, make_interactions, make_items, make_users
from align3gr_kit.data.split import leave_one_out
from align3gr_kit.prompts import TEMPLATES, build_sft_dataset, find_leaks, sequential_prompt, task_counts
from align3gr_kit.prompts.text import intention_query, preference_summary
from align3gr_kit.scid import ScidTable

ALL = ["A", "B1", "B2", "C1-1", "C1-2", "C2", "C3", "TS-Align"]


def random_scids(n: int, kind: str, seed: int) -> ScidTable:
    """Unique random 3-level SCIDs (the last level de-duplicates, like the tokenizer's rule)."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 6, n), rng.integers(0, 6, n), np.zeros(n, dtype=int)], 1)
    seen: dict[tuple, int] = {}
    for r in range(n):
        key = (codes[r, 0], codes[r, 1])
        codes[r, 2] = seen.get(key, 0)
        seen[key] = codes[r, 2] + 1
    return ScidTable(codes, kind)


def tiny_dataset(repeat: bool = False) -> RecDataset:
    """12 items, 6 users with 6-9 interactions each; ``repeat`` makes user 0 re-consume its test item."""
    items = make_items(
        [{"raw_id": f"i{i}", "title": f"Title {i} (199{i % 10})", "description": f"A {['red', 'blue'][i % 2]} "
          f"widget number {i} with {['strings', 'keys', 'drums'][i % 3]}", "categories": [["Music", "Toys"][i % 2]],
          "brand": ["Acme", "Bolt", ""][i % 3]} for i in range(12)],
        "tiny",
    )
    users = make_users([{"raw_id": f"u{u}", "profile": f"A listener number {u} who likes jazz"} for u in range(6)], "tiny")
    rng = np.random.default_rng(0)
    uid, iid, ts = [], [], []
    for u in range(6):
        seq = list(rng.permutation(12)[: 6 + u % 4])
        if repeat and u == 0:
            seq = seq[:-1] + [seq[1]]  # the test item was also consumed early on
        uid += [u] * len(seq)
        iid += seq
        ts += list(range(len(seq)))
    return RecDataset("tiny", items, users, make_interactions(uid, iid, ts), "test")


@pytest.fixture(scope="module")
def setup():
    ds = tiny_dataset()
    split = leave_one_out(ds, 20)
    return ds, split, random_scids(ds.n_items, "item", 1), random_scids(ds.n_users, "user", 2)


def test_every_task_and_columns(setup):
    ds, split, it, ut = setup
    sft = build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=ALL), seed=0, progress=False)
    assert set(sft.column_names) >= {"prompt", "completion", "task", "user_id", "target", "history"}
    counts = task_counts(sft).set_index("task").examples
    assert list(counts.index) == ALL
    n_train = len(split.train)
    for t in ("A", "C1-1", "C1-2", "C2", "C3"):
        assert counts[t] == n_train, t
    assert counts["B1"] == 3 * ds.n_items  # title->SCID, description->SCID, SCID->title
    assert counts["B2"] == 2 * ds.n_users
    df = sft.to_pandas()
    for p in df.prompt:
        assert p.endswith("\n")
    # Task A: completion is the target's SCID and every history item is in the prompt, in order.
    for _, r in df[df.task == "A"].iterrows():
        assert r.completion == it.string(r.target)
        positions = [r.prompt.index(it.string(i)) for i in r.history]
        assert positions == sorted(positions)
    # C1-1 answers with the next title, C1-2 shows titles and answers with the SCID.
    c11 = df[df.task == "C1-1"].iloc[0]
    assert c11.completion == ds.items.title[c11.target]
    c12 = df[df.task == "C1-2"].iloc[0]
    assert all(ds.items.title[i] in c12.prompt for i in c12.history) and c12.completion == it.string(c12.target)
    # B2 in both directions.
    b2 = df[df.task == "B2"]
    assert set(b2.variant) == {"profile->scid", "scid->profile"}
    fwd = b2[b2.variant == "profile->scid"].iloc[0]
    assert fwd.completion == ut.string(fwd.user_id) and ds.users.profile[fwd.user_id] in fwd.prompt
    # TS-Align: one row per (token, direction); completions of text->token are single tokens.
    ts = df[df.task == "TS-Align"]
    assert len(ts) == 2 * (len(it.vocabulary()) + len(ut.vocabulary()))
    assert set(ts[ts.variant == "text->token"].completion) == set(it.vocabulary()) | set(ut.vocabulary())


def test_paraphrases_and_determinism(setup):
    ds, split, it, ut = setup
    cfg = PromptConfig(tasks=["A", "C2"])
    a = build_sft_dataset(ds, split, it, ut, cfg, seed=3, progress=False).to_pandas()
    b = build_sft_dataset(ds, split, it, ut, cfg, seed=3, progress=False).to_pandas()
    c = build_sft_dataset(ds, split, it, ut, cfg, seed=4, progress=False).to_pandas()
    pd.testing.assert_frame_equal(a, b)
    assert not a.prompt.equals(c.prompt)
    used = set(a[a.task == "A"].template)
    assert len(used) >= 3 and used <= set(range(len(TEMPLATES["A"])))


def test_user_scid_switch_changes_every_prompt(setup):
    ds, split, it, ut = setup
    on = build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=ALL, user_scid_in_prompt=True), 0, progress=False).to_pandas()
    off = build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=ALL, user_scid_in_prompt=False), 0, progress=False).to_pandas()
    assert "B2" not in set(off.task)  # nothing would read user tokens without them in prompts
    # Every user-bound prompt names its user's SCID when on. The exceptions are by design: B2
    # profile->SCID (the SCID is the answer) and TS-Align (token semantics, no user).
    bound = on[(on.user_id >= 0) & ~on.variant.isin(["profile->scid"])]
    assert len(bound) == len(on[~on.task.isin(["TS-Align"]) & (on.variant != "profile->scid")])
    for _, r in bound.iterrows():
        assert ut.string(r.user_id) in r.prompt
    assert not off.prompt.str.contains("<u").any()
    # Same seed, same rows and templates: every paired prompt differs, only by the user mention.
    on_cmp = on[~on.task.isin(["B2", "TS-Align"])].reset_index(drop=True)
    off_cmp = off[~off.task.isin(["TS-Align"])].reset_index(drop=True)
    assert len(on_cmp) == len(off_cmp)
    assert (on_cmp.template == off_cmp.template).all() and (on_cmp.completion == off_cmp.completion).all()
    assert (on_cmp.prompt != off_cmp.prompt).all()
    # The evaluation prompt follows the switch too.
    hist = [it.string(0), it.string(1)]
    assert sequential_prompt(ut.string(0), hist) != sequential_prompt(None, hist)


def test_sequential_prompt_is_first_template():
    p = sequential_prompt("<ua_1><ub_2>", ["<a_1><b_1>", "<a_2><b_3>"])
    assert p == ("User <ua_1><ub_2> has interacted with the following items in order: <a_1><b_1>, <a_2><b_3>. "
                 "Which item will user <ua_1><ub_2> interact with next?\n")
    assert p == TEMPLATES["A"][0].format(history="<a_1><b_1>, <a_2><b_3>", user="user <ua_1><ub_2>",
                                         User="User <ua_1><ub_2>", for_user="")


def test_cap_and_task_mix(setup):
    ds, split, it, ut = setup
    n_train = len(split.train)
    cfg = PromptConfig(tasks=["A", "B1", "C3"], max_per_task=10, task_mix={"A": 2.0, "B1": 0.5, "C3": 0.0})
    sft = build_sft_dataset(ds, split, it, ut, cfg, seed=0, progress=False)
    counts = task_counts(sft).set_index("task").examples
    assert n_train > 10
    assert counts["A"] == 20 and counts["B1"] == 5 and "C3" not in counts.index
    with pytest.raises(ValueError, match="unknown task"):
        build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=["Z"]), seed=0, progress=False)


def test_no_validation_or_test_target_leaks(setup):
    ds, split, it, ut = setup
    sft = build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=ALL), seed=0, progress=False)
    assert find_leaks(sft, split, it) == []
    # Independent check on data without repeats: a user's held-out items never appear as an
    # SCID in that user's rows, and no next-item row targets them.
    df = sft.to_pandas()
    for frame in (split.valid, split.test):
        for u, y in zip(frame.user_id, frame.target):
            rows = df[df.user_id == u]
            assert not rows.prompt.str.contains(it.string(y), regex=False).any()
            assert not rows.completion.str.contains(it.string(y), regex=False).any()
            assert not ((rows.target == y) & rows.task.isin(["A", "C1-1", "C1-2", "C2"])).any()
            assert all(y not in h for h in rows.history)


def test_find_leaks_catches_injected_leak(setup):
    from datasets import Dataset

    ds, split, it, ut = setup
    sft = build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=["A"]), seed=0, progress=False).to_pandas()
    u = int(split.test.user_id[0])
    test_item = int(split.test.target[0])
    valid_hist = list(split.valid.history[0])
    bad = {"prompt": sequential_prompt(ut.string(u), [it.string(i) for i in valid_hist]),
           "completion": it.string(int(split.valid.target[0])), "task": "A", "variant": "history->scid",
           "template": 0, "user_id": u, "target": int(split.valid.target[0]), "history": valid_hist}
    leaked = Dataset.from_pandas(pd.concat([sft, pd.DataFrame([bad])], ignore_index=True), preserve_index=False)
    msgs = find_leaks(leaked, split, it)
    assert any("not a window" in m for m in msgs) and any("validation item" in m for m in msgs)
    # A prompt that mentions the test item's SCID for its user is caught by the text rule.
    bad2 = dict(bad, prompt=bad["prompt"] + it.string(test_item), target=-1, task="C3", history=valid_hist[:1])
    leaked2 = Dataset.from_pandas(pd.concat([sft, pd.DataFrame([bad2])], ignore_index=True), preserve_index=False)
    assert any("test item" in m for m in find_leaks(leaked2, split, it))


def test_reconsumed_item_is_not_a_leak():
    ds = tiny_dataset(repeat=True)
    split = leave_one_out(ds, 20)
    it, ut = random_scids(ds.n_items, "item", 1), random_scids(ds.n_users, "user", 2)
    y = int(split.test.target[0])
    assert y in split.train_sequences[0]  # user 0 consumed its test item during training too
    sft = build_sft_dataset(ds, split, it, ut, PromptConfig(tasks=ALL), seed=0, progress=False)
    assert find_leaks(sft, split, it) == []
    rows = sft.to_pandas()
    assert rows[(rows.user_id == 0)].prompt.str.contains(it.string(y), regex=False).any()


def test_item_only_tokenization_has_no_user_tokens(setup):
    ds, split, it, _ = setup
    with pytest.warns(UserWarning, match="no user SCIDs"):
        sft = build_sft_dataset(ds, split, it, None, PromptConfig(tasks=["A", "B1", "B2"]), seed=0, progress=False)
    df = sft.to_pandas()
    assert "B2" not in set(df.task) and not df.prompt.str.contains("<u").any()


def test_preference_summary_hand_computed():
    items = make_items([
        {"raw_id": "a", "title": "A", "categories": ["Drama", "War"], "brand": "X"},
        {"raw_id": "b", "title": "B", "categories": ["Drama"], "brand": "X"},
        {"raw_id": "c", "title": "C", "categories": ["Comedy", "War"], "brand": "Y"},
        {"raw_id": "d", "title": "D", "categories": ["Action"], "brand": ""},
    ], "t")
    # Drama 2, War 2, Comedy 1, Action 1 -> top 3 by count then name: Drama, War, Action.
    assert preference_summary([0, 1, 2, 3], items) == (
        "Main interests: Drama, War, Action. Favourite brand: X. Most recent interest: Action.")
    assert preference_summary([2], items) == "Main interests: Comedy, War. Most recent interest: Comedy."


def test_intention_query_comes_from_the_item():
    items = make_items([{"raw_id": "a", "title": "Heat (1995)", "description": "A crime thriller about a heist",
                         "categories": ["Crime"], "brand": "Warner"}], "t")
    for seed in range(5):
        q = intention_query(items.iloc[0], np.random.default_rng(seed))
        assert "in Crime" in q and "from the 1990s" in q
        words = q.split("about ")[1].split(" from")[0].split(" by")[0].split(" and ")
        assert set(words) <= {"crime", "thriller", "heist"} and 1 <= len(words) <= 2
        assert "Heat" not in q
