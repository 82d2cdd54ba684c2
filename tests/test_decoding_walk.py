"""The decoding walk of notebook 04 (:mod:`align3gr_kit.decoding.walk`) on the finished smoke run.

Each table of the walk is checked against something computed another way: the final list against
:func:`align3gr_kit.evaluate.recommend` and the stage's saved target ranks, the allowed tokens and the
items remaining against a count over the item SCID strings, the cumulative log-probs against teacher
forcing (a plain forward of prompt + prefix, log-softmax over the whole vocabulary: the scores the beam
keeps are not renormalised over the allowed tokens).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align3gr_kit.decoding import ItemTrie, constrained_beam_search, score_items
from align3gr_kit.decoding.walk import decoding_walks, walk_figure
from align3gr_kit.evaluate import item_token_ids, read_target_ranks, recommend
from align3gr_kit.model.encoding import left_pad
from align3gr_kit.stages.contract import get_stage, stage_dir

N_USERS = 4


@pytest.fixture(scope="module")
def walked(smoke_run):
    cfg = smoke_run
    sft = get_stage("04_sft").load_artifacts(stage_dir(cfg, "04_sft"))
    model, tokenizer, item_scids, user_scids = sft.load_model()
    data = get_stage("00_data").load_artifacts(stage_dir(cfg, "00_data"))
    walks = decoding_walks(model, tokenizer, cfg, data.dataset, data.split, item_scids, user_scids, n_users=N_USERS)
    trie = ItemTrie(item_token_ids(tokenizer, item_scids))
    return cfg, model, tokenizer, item_scids, user_scids, data, trie, walks


def test_final_list_is_the_evaluated_list(walked):
    cfg, model, tokenizer, item_scids, user_scids, data, _, walks = walked
    test = data.split.test
    use_user = cfg.prompts.user_scid_in_prompt and user_scids is not None
    # the users decoded together, batched and left-padded as evaluation decodes them
    items, scores = recommend(model, tokenizer, item_scids, user_scids, test.iloc[:N_USERS], cfg.decode, use_user,
                              cfg.sft.max_length, k=10, progress=False, precision=cfg.model.dtype)
    saved = read_target_ranks(stage_dir(cfg, "04_sft"))["SFT"]["test"]
    assert [w.user_id for w in walks] == test.user_id.iloc[:N_USERS].tolist()
    for row, walk in enumerate(walks):
        assert walk.top.item_id.tolist() == items[row].tolist()
        np.testing.assert_allclose(walk.top.log_prob.to_numpy(), scores[row], atol=1e-4)
        assert walk.target == int(test.target.iloc[row])
        assert walk.top.target.tolist() == [i == walk.target for i in items[row]]
        # the stage's own evaluation (all test users, its batches) ranked the held-out item the same way
        rank = saved[row]
        assert walk.hit == (0 <= rank < 10)
        if walk.hit:
            assert int(walk.top[walk.top.target]["rank"].iloc[0]) == rank + 1


def test_allowed_tokens_and_items_remaining_match_the_catalogue(walked):
    _, _, tokenizer, item_scids, _, _, trie, walks = walked
    scids = [item_scids.tokens(i) for i in range(item_scids.n)]

    def items_with(prefix: str, depth: int) -> list[list[str]]:
        return [s for s in scids if "".join(s[:depth]) == prefix]

    for walk in walks:
        for r in walk.allowed.itertuples():
            depth = r.level - 1
            under = items_with(r.parent, depth)
            assert r.items_under_parent == len(under)
            assert r.allowed.split() == sorted({s[depth] for s in under}, key=tokenizer.convert_tokens_to_ids)
            node = trie.node_of(tokenizer.convert_tokens_to_ids(under[0][:depth]))
            assert r.n_allowed == int((trie.child_tokens[depth][node] >= 0).sum())
        for r in walk.candidates.itertuples():
            assert r.items_remaining == len(items_with(r.prefix, r.level))
            assert r.on_target == (walk.target_scid.startswith(r.prefix))
        kept = walk.candidates[walk.candidates.kept]
        last = walk.levels.level.max()
        # what the level table sums: items under the kept prefixes; the final level's are the list itself
        for r in walk.levels.itertuples():
            assert r.items_reachable == kept[kept.level == r.level].items_remaining.sum()
            assert r.candidates == walk.allowed[walk.allowed.level == r.level].n_allowed.sum()
        assert walk.levels[walk.levels.level == last].kept.iloc[0] >= len(walk.top)


def test_the_beam_keeps_the_best_candidates(walked):
    cfg, *_, walks = walked
    for walk in walks:
        for level, cand in walk.candidates.groupby("level"):
            kept = cand[cand.kept].sort_values("rank")
            assert kept["rank"].tolist() == list(range(1, len(kept) + 1))
            assert len(kept) == min(cfg.decode.beam_width, len(cand))
            assert kept.log_prob.is_monotonic_decreasing
            pruned = cand[~cand.kept]
            if len(pruned):
                assert kept.log_prob.min() >= pruned.log_prob.max()


def test_log_probs_match_teacher_forcing(walked):
    _, model, tokenizer, _, _, _, trie, walks = walked
    for walk in walks:
        ids, mask = left_pad([walk.prompt_ids], 0)
        full = score_items(model, ids, mask, trie)[0]  # [n_items], the library's teacher forcing
        np.testing.assert_allclose(walk.top.log_prob.to_numpy(), full[walk.top.item_id.tolist()].numpy(), atol=1e-4)
        # every kept prefix at every level, by a plain forward of prompt + prefix
        kept = walk.candidates[walk.candidates.kept]
        seqs = [walk.prompt_ids + tokenizer.convert_tokens_to_ids(_split_scid(p)) for p in kept.prefix]
        for level in sorted(set(kept.level)):
            rows = [s for s, lv in zip(seqs, kept.level) if lv == level]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(rows)).logits.float()
            T = len(walk.prompt_ids)
            logp = F.log_softmax(logits[:, T - 1 : T - 1 + level], dim=-1)
            want = logp.gather(2, torch.tensor(rows)[:, T:, None]).squeeze(2).sum(1)
            got = torch.tensor(kept[kept.level == level].log_prob.to_numpy(), dtype=torch.float32)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def _split_scid(prefix: str) -> list[str]:
    return [t + ">" for t in prefix.split(">") if t]


def test_trace_changes_nothing(walked):
    _, model, _, _, _, _, trie, walks = walked
    ids, mask = left_pad([w.prompt_ids for w in walks], 0)
    plain = constrained_beam_search(model, ids, mask, trie, beam_width=20)
    steps = []
    traced = constrained_beam_search(model, ids, mask, trie, beam_width=20, trace=steps)
    assert torch.equal(plain.items, traced.items) and torch.equal(plain.scores, traced.scores)
    assert [s.level for s in steps] == list(range(trie.levels))
    assert torch.equal(steps[-1].kept_scores.sort(dim=1, descending=True).values[:, : plain.scores.shape[1]],
                       plain.scores)


def test_figure_has_one_view_per_user(walked):
    *_, walks = walked
    fig = walk_figure(walks)
    per = len(fig.data) // len(walks)
    assert len(fig.data) == per * len(walks)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label.split()[1] for b in buttons] == [str(w.user_id) for w in walks]
    for i, b in enumerate(buttons):
        visible = b.args[0]["visible"]
        assert [j // per == i for j in range(len(fig.data))] == list(visible)
        assert str(walks[i].user_id) in b.args[1]["title.text"]
    # the first user's view: its final list in green, with its ranks as labels
    final = fig.data[3]
    assert list(final.text) == [str(r) for r in walks[0].top["rank"]]


def test_notebook_04_names_what_the_code_does():
    """The sentences of notebook 04 that name the trainer and the papers, checked against the code."""
    import inspect

    import nbformat

    from align3gr_kit.train import sft
    from align3gr_kit.utils import project_root

    nb = nbformat.read(project_root() / "notebooks" / "04_sft.ipynb", as_version=4)
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    source = inspect.getsource(sft.train_sft)
    assert "from transformers import Trainer" in source and "Trainer(" in source and "SFTTrainer" not in source
    assert "`transformers.Trainer`" in md and "SFTTrainer" not in md
    for arxiv in ("2511.11255", "2602.22632", "2311.09049", "2305.05065"):
        assert f"arxiv.org/abs/{arxiv}" in md
    # the walk's entry points the notebook calls, and the "try this" arguments it names, exist
    assert "decoding_walks(" in "".join(c.source for c in nb.cells if c.cell_type == "code")
    params = inspect.signature(decoding_walks).parameters
    assert {"beam_width", "users", "n_users"} <= set(params)
    assert "## Try this" in md


def test_allowed_summary_cuts_only_the_display(walked):
    *_, walks = walked
    walk = walks[0]
    short = walk.allowed_summary(parents=2, tokens=3)
    assert set(short.parent_rank) <= {1, 2} and len(short) == int((walk.allowed.parent_rank <= 2).sum())
    for r, full in zip(short.itertuples(), walk.allowed[walk.allowed.parent_rank <= 2].itertuples()):
        assert r.n_allowed == full.n_allowed
        assert r.allowed.removesuffix(" ...").split() == full.allowed.split()[:3]
        assert r.allowed.endswith(" ...") == (full.n_allowed > 3)
