"""The LLM keyword extractor: parsing, the per-token cache, the TF-IDF fallback, TS-Align descriptions,
and (slow) SmolLM2 on three tokens."""

from __future__ import annotations

import json
import time

import pytest
import torch

from align3gr_kit.config import ModelConfig, PromptConfig
from align3gr_kit.prompts.keywords import TfidfKeywords, token_groups
from align3gr_kit.prompts.llm_keywords import (
    CACHE_FILE,
    LLMKeywords,
    parse_description,
    parse_keywords,
    sample_lines,
    token_annotations,
    user_message,
)

DOCS = ["vintage electric guitar maple\nacoustic guitar spruce top\nguitar strings bronze set",
        "digital piano weighted keys\nstage piano hammer action",
        "drum kit maple shells\nsnare drum steel\ncymbal pack bronze"]


def test_parse_keywords_hand_examples():
    assert parse_keywords("Keywords: Guitars, electric guitar; AMPS\n- picks") == ["guitars", "electric guitar", "amps",
                                                                                    "picks"]
    # Numbered lists, markdown, quotes, duplicates, stop words and numbers-only pieces.
    assert parse_keywords('**Keywords:** 1. "Guitar" 2. the 3. 1994 4. guitar 5. Maple neck') == ["guitar", "maple neck"]
    # A piece of more than four words is a sentence, not a keyword; a cut last piece is dropped.
    assert parse_keywords("strings, a lot of very nice things, bronze, gu", truncated=True) == ["strings", "bronze"]
    assert parse_keywords("strings, bronze, gu") == ["strings", "bronze", "gu"]
    assert parse_keywords(", , 1. 2. 3.") == []
    assert parse_keywords("electric guitars (vintage), [maple]") == ["electric guitars", "vintage", "maple"]
    assert parse_keywords("drums, category: film category") == ["drums"]
    assert len(parse_keywords(", ".join(f"word{chr(97 + i)}" for i in range(26)))) == 20


def test_parse_description_and_sample():
    assert parse_description(' "**The group is guitars.**"\nKeywords: x') == "The group is guitars."
    assert parse_description("Description: 1994, 1995") == ""
    lines = "\n".join(f"title {i} extra words here" for i in range(30))
    assert sample_lines(lines, 4, 2) == ["title 0", "title 10", "title 19", "title 29"]  # evenly spaced, cut
    assert sample_lines("a\na\n\nb", 10, 5) == ["a", "b"]
    assert user_message(["x"], "user").startswith("These users belong to one group:\n- x")


def tiny_lm(silent: bool):
    """A tiny random Llama with a locally trained BPE (no chat template: plain prompt frame). ``silent``:
    a zero output head, so greedy decoding emits token 0 (a special token) forever: answers are empty."""
    from align3gr_kit.model import build_backbone

    cfg = ModelConfig(base="tiny-llama", hidden_size=32, num_layers=1, num_heads=2, bpe_vocab_size=300)
    model, tok = build_backbone(cfg, DOCS * 20 + [user_message(["x"], "item")] * 5, [], seed=0)
    if silent:
        with torch.no_grad():
            model.get_output_embeddings().weight.zero_()
        assert tok.convert_ids_to_tokens(0) in tok.all_special_tokens
    return model, tok


def test_fallback_to_tfidf_is_counted(tmp_path):
    model, tok = tiny_lm(silent=True)
    ex = LLMKeywords(load=lambda: (model, tok), model_id="tiny", cache_dir=tmp_path, max_description_tokens=3,
                     max_keyword_tokens=4)
    notes = ex.annotate(DOCS)
    assert [n.source for n in notes] == ["tfidf"] * 3 and all(n.description == "" for n in notes)
    assert [n.keywords for n in notes] == TfidfKeywords().extract(DOCS, 20)
    assert ex.stats == {"llm": 0, "fallback": 3, "cached": 0, "generated": 3}
    assert ex.extract(DOCS, 2) == [kw[:2] for kw in TfidfKeywords().extract(DOCS, 20)]


def test_cache_per_token_keyed_by_inputs_and_model(tmp_path):
    model, tok = tiny_lm(silent=True)
    calls = []

    def load():
        calls.append(1)
        return model, tok

    settings = {"max_description_tokens": 3, "max_keyword_tokens": 4}
    first = LLMKeywords(load=load, model_id="tiny", cache_dir=tmp_path, **settings)
    # An answer placed in the cache for token 1 is used as is (the rest falls back: silent model).
    msg = user_message(sample_lines(DOCS[1], first.max_items, first.max_words), "item")
    (tmp_path / CACHE_FILE).write_text(json.dumps({first.cache_key(msg): {
        "description": "Pianos and keyboards.", "keywords": ["piano", "keys", "hammer action"], "answer": "..."}}))
    notes = first.annotate(DOCS)
    assert [n.source for n in notes] == ["tfidf", "llm", "tfidf"]
    assert notes[1].keywords == ["piano", "keys", "hammer action"] and notes[1].description == "Pianos and keyboards."
    assert first.stats == {"llm": 1, "fallback": 2, "cached": 1, "generated": 2} and len(calls) == 1
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 3

    # A second extractor on the same folder asks the model nothing.
    again = LLMKeywords(load=load, model_id="tiny", cache_dir=tmp_path, **settings)
    assert again.annotate(DOCS) == notes and len(calls) == 1 and again.stats["cached"] == 3
    # A changed document, another model id or other settings are new keys.
    changed = LLMKeywords(load=load, model_id="tiny", cache_dir=tmp_path, **settings)
    changed.annotate([DOCS[0] + "\nbass guitar", DOCS[1], DOCS[2]])
    assert changed.stats["generated"] == 1 and changed.stats["cached"] == 2
    assert first.cache_key(msg) != LLMKeywords(load=load, model_id="other", **settings).cache_key(msg)
    assert first.cache_key(msg) != LLMKeywords(load=load, model_id="tiny", max_keyword_tokens=5).cache_key(msg)


def test_greedy_answers_are_deterministic():
    model, tok = tiny_lm(silent=False)
    answers = [LLMKeywords(load=lambda: (model, tok), model_id="tiny", max_description_tokens=4,
                           max_keyword_tokens=6)._answers([user_message(["guitar strings"], "item")] * 2)
               for _ in range(2)]
    assert answers[0] == answers[1] and answers[0][0] == answers[0][1]
    assert answers[0][0]["answer"]  # the random model does write something


def test_ts_align_uses_the_llm_descriptions(tmp_path):
    from test_prompts_builder import random_scids, tiny_dataset

    from align3gr_kit.data.split import leave_one_out
    from align3gr_kit.prompts import build_sft_dataset

    ds = tiny_dataset()
    items, users = random_scids(ds.n_items, "item", 1), random_scids(ds.n_users, "user", 2)

    def unused():
        raise AssertionError("every answer is cached; the model must not be loaded")

    ex = LLMKeywords(load=unused, model_id="stub", cache_dir=tmp_path)
    cache = {}
    for table, texts in ((items, [ds.item_text(i) for i in range(ds.n_items)]), (users, ds.users.profile.tolist())):
        groups = token_groups(table)
        for tok, doc in zip(groups.tokens, groups.documents(texts)):
            msg = user_message(sample_lines(doc, ex.max_items, ex.max_words), table.kind)
            cache[ex.cache_key(msg)] = {"description": f"Group {tok}.", "keywords": ["alpha", "beta"], "answer": ""}
    (tmp_path / CACHE_FILE).write_text(json.dumps(cache))
    sft = build_sft_dataset(ds, leave_one_out(ds, 20), items, users, PromptConfig(tasks=["TS-Align"]), seed=0,
                            keyword_extractor=ex, progress=False).to_pandas()
    to_text = sft[sft.variant == "token->text"]
    assert len(to_text) > 0
    for prompt, completion in zip(to_text.prompt, to_text.completion):
        token = next(t for t in items.vocabulary() + users.vocabulary() if t in prompt)
        assert completion.startswith(f"Group {token}. Keywords: alpha, beta")
    assert ex.stats["llm"] == len(cache) and ex.stats["fallback"] == 0
    # The notebook table: every item token, LLM descriptions from the cache; TF-IDF without an extractor.
    texts = [ds.item_text(i) for i in range(ds.n_items)]
    notes = token_annotations(ex, items, texts, k=1)
    assert list(notes.token) == items.vocabulary() and set(notes.source) == {"llm"}
    assert notes.description[0] == f"Group {notes.token[0]}." and set(notes.keywords) == {"alpha"}
    assert notes.rows.sum() == items.n * items.levels and set(notes.level) == {1, 2, 3}
    plain = token_annotations(None, items, texts, k=2)
    assert list(plain.keywords) == [", ".join(kw) for kw in TfidfKeywords().extract(token_groups(items).documents(texts), 2)]


@pytest.mark.slow
def test_smollm2_writes_keywords_for_three_tokens(tmp_path):
    """The real extractor on SmolLM2-135M-Instruct: three item tokens, greedy, small budgets."""
    from align3gr_kit.model.pretrained import gguf_path
    from align3gr_kit.model.sa_init import keyword_extractor

    try:
        gguf_path("smollm2-135m")
    except ModuleNotFoundError as err:
        pytest.skip(f"SmolLM2 wheel missing: {err}")
    ex = keyword_extractor(ModelConfig(base="smollm2-135m", sa_init_extractor="llm"), tmp_path)
    # Small budgets keep this under a minute on 2 busy CPU cores (a decoding step of 3 prompts ~0.4 s).
    ex.max_items, ex.max_words, ex.max_description_tokens, ex.max_keyword_tokens = 3, 8, 16, 20
    t0 = time.time()
    notes = ex.annotate(DOCS)
    assert ex.stats["generated"] == 3 and ex.stats["llm"] + ex.stats["fallback"] == 3
    assert ex.stats["llm"] >= 2, notes  # a pretrained instruct model answers in the asked format
    for doc, note in zip(DOCS, notes):
        if note.source == "llm":
            assert note.description and 1 <= len(note.keywords) <= 20
            assert all(kw == kw.lower().strip() and kw for kw in note.keywords)
    print(f"SmolLM2 keywords for 3 tokens in {time.time() - t0:.1f}s:", notes)
    # The next stage, handed this folder to reuse, reads every answer and loads no model.
    later = keyword_extractor(ModelConfig(base="smollm2-135m", sa_init_extractor="llm"), tmp_path / "s04", reuse=tmp_path)
    later.max_items, later.max_words, later.max_description_tokens, later.max_keyword_tokens = 3, 8, 16, 20
    later.load = None  # calling it would fail
    assert later.annotate(DOCS) == notes and later.stats["cached"] == 3 and later.stats["generated"] == 0
