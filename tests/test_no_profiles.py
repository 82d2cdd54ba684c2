"""Issue 14: datasets with item text and no user profiles (the paper's Amazon sets in LC-Rec format).

One LC-Rec-format dataset is written by the test: ``Toy.item.json`` with titles, descriptions
(some stored as Python-list strings, some with HTML entities), brands and categories, and
``Toy.inter.json`` with no profiles. On it: item-only text SCIDs (the TIGER-style and LC-Rec-style
baselines' tokenizer), dual SCIDs with profiles derived from history, catalogue-only SCIDs, each with
0 collisions; missing text fails before any embedding, with advice that is followed here; derived
profiles never name a held-out item.
"""

import dataclasses
import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts
from align3gr_kit.config import RunConfig
from align3gr_kit.data import leave_one_out
from align3gr_kit.data.lcrec import load_lcrec
from align3gr_kit.data.profiles import apply_user_profiles, history_profile, history_profiles, item_labels
from align3gr_kit.data.schema import DataError, RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.prompts.builder import build_sft_dataset, find_leaks, task_counts
from align3gr_kit.prompts.text import cut_words
from align3gr_kit.report.specs import ALL_TASKS, GENERATIVE_BASELINES
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.pipeline import run_tokenize, tokenize_catalogue

CATS = ["Guitars", "Drums", "Keyboards", "Microphones", "Cables", "Amplifiers"]
BRANDS = {c: [f"{c[:3]}Co", f"{c[:3]}Works"] for c in CATS}
N_ITEMS, N_USERS = 60, 80
TINY = {"sasrec": {"dim": 16, "layers": 1, "heads": 2, "epochs": 2}, "sc_dim": 16,
        "hidden_dim": 32, "code_dim": 8, "batch_size": 128, "phase1_max_epochs": 2, "phase1_patience": 1,
        "phase2_epochs": 3}


def _items() -> dict:
    items = {}
    for i in range(N_ITEMS):
        cat = CATS[i % len(CATS)]
        desc: object = f"A {cat.lower()[:-1]} for the stage, model {i}"
        if i % 3 == 0:  # the LC-Rec dumps store some descriptions as a Python list's repr
            desc = repr([f"Relay/CAPACITOR kit &amp; {cat.lower()} no. {i}", "Second line"])
        elif i % 3 == 1:
            desc = f"&quot;Best&quot; {cat.lower()} &amp; more, no. {i}"
        cats = f"Musical Instruments, {cat}, {cat} Accessories" if i % 2 else ["Musical Instruments", cat]
        # zero-padded numbers: no title is a substring of another (the leak check searches the text)
        items[str(i)] = {"title": f"{BRANDS[cat][i % 2]} {cat[:-1]} Model {i:03d}", "description": desc,
                         "brand": BRANDS[cat][i % 2] if i % 5 else "", "categories": cats}
    return items


def _inter(rng: np.random.Generator) -> dict:
    """Each user mostly buys one category; 5-9 items, chronological."""
    by_cat = {c: [i for i in range(N_ITEMS) if CATS[i % len(CATS)] == c] for c in CATS}
    seqs = {}
    for u in range(N_USERS):
        fav = CATS[u % len(CATS)]
        n = int(rng.integers(5, 10))
        seq = [int(rng.choice(by_cat[fav])) if rng.random() < 0.8 else int(rng.integers(N_ITEMS)) for _ in range(n)]
        seqs[str(u)] = seq
    return seqs


@pytest.fixture(scope="module")
def lcrec_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lcrec")
    (folder / "Toy.item.json").write_text(json.dumps(_items()))
    (folder / "Toy.inter.json").write_text(json.dumps(_inter(np.random.default_rng(0))))
    return folder


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalogue")
    (folder / "Shop.item.json").write_text(json.dumps(_items()))
    return folder


@pytest.fixture(scope="module")
def data(lcrec_dir):
    ds = load_lcrec(lcrec_dir, "Toy")
    return ds, leave_one_out(ds, 20)


@pytest.fixture
def cache(request):
    return request.config.cache.mkdir("align3gr-minilm")  # text embeddings reused across runs


def config(**tok) -> RunConfig:
    return RunConfig(seed=0).override({f"tokenizer.{k}": v for k, v in {**TINY, **tok}.items()})


# ------------------------------------------------------------------ loader
def test_lcrec_item_text_is_cleaned_and_counted(lcrec_dir, caplog):
    with caplog.at_level(logging.INFO, logger="align3gr_kit.data.lcrec"):
        ds = load_lcrec(lcrec_dir, "Toy")
    it = ds.items.set_index("raw_id")
    # a Python-list string becomes its elements joined, the entity inside it unescaped
    assert it.loc["0", "description"] == "Relay/CAPACITOR kit & guitars no. 0 Second line"
    assert it.loc["1", "description"] == '"Best" drums & more, no. 1'
    assert it.loc["1", "categories"] == ["Musical Instruments", "Drums", "Drums Accessories"]
    assert it.loc["0", "categories"] == ["Musical Instruments", "Guitars"] and it.loc["0", "category"] == "Guitars"
    assert (ds.users.profile == "").all()
    used = ds.items
    expect = {"title": len(used), "description": len(used), "categories": len(used),
              "brand": int((used.raw_id.astype(int) % 5 != 0).sum())}
    assert ds.extra["item_fields"] == expect and expect["brand"] < len(used)
    assert f"{N_ITEMS} items; items with each field: title {N_ITEMS}, description {N_ITEMS}, brand {expect['brand']}, " \
        f"categories {N_ITEMS}" in caplog.text


def test_list_strings_never_run_code(tmp_path):
    items = {"0": {"title": "a", "description": "[__import__('os').getcwd()]"},
             "1": {"title": "b", "description": "[unclosed, 'x'"}}
    (tmp_path / "T.item.json").write_text(json.dumps(items))
    ds = load_lcrec(tmp_path, "T")
    # not a literal: kept as written, never evaluated
    assert ds.items.description.tolist() == ["[__import__('os').getcwd()]", "[unclosed, 'x'"]


def test_catalogue_loader_split_and_round_trip(catalogue_dir, tmp_path):
    ds = load_lcrec(catalogue_dir, "")  # the prefix is found from the only *.item.json
    assert (ds.name, ds.n_items, ds.n_users, len(ds.interactions)) == ("Shop", N_ITEMS, 0, 0)
    split = leave_one_out(ds, 20)
    assert split.stats() == {"train_samples": 0, "valid_users": 0, "test_users": 0, "avg_history_len": 0.0}
    back = RecDataset.load(ds.save(tmp_path / "ds"))
    pd.testing.assert_frame_equal(back.items, ds.items)
    assert back.n_users == 0 and back.interactions.empty
    Split.load(split.save(tmp_path / "split"))


def test_lcrec_without_either_file_says_so(tmp_path):
    with pytest.raises(DataError, match=r"Toy\.inter\.json: file missing"):
        load_lcrec(tmp_path, "Toy")


# ------------------------------------------------------------------ profiles from history
def test_profile_rule_by_hand(data):
    ds, _ = data
    raw = ds.items.raw_id.astype(int).tolist()
    ids = [raw.index(r) for r in (1, 7, 2, 13)]  # file items 1, 7, 13: Drums (odd: + Drums Accessories); 2: Keyboards
    # Worked by hand: "Musical Instruments" is on every item (more than half): skipped. Drums and Drums
    # Accessories 3x each, both last used at position 3: by name; Keyboards 1x. Brands: DruWorks on the odd
    # items 1, 7, 13 (3x), KeyCo on 2 (1x). Recent titles: 13, 2, 7.
    assert history_profile(ds, ids) == (
        "Interested in: Drums, Drums Accessories, Keyboards. Brands: DruWorks, KeyCo. "
        "Recently: DruWorks Drum Model 013; KeyCo Keyboard Model 002; DruWorks Drum Model 007.")


def _leaks(ds: RecDataset, split: Split, profiles: list[str]) -> list[int]:
    """Users whose profile names a held-out item's title, or a category none of their training items has."""
    labels = item_labels(ds)
    titles = ds.items.title.tolist()
    bad = []
    for u, (v, t) in enumerate(zip(split.valid.target, split.test.target)):
        train = set(split.train_sequences[u].tolist())
        seen = {lb for i in train for lb in labels[i]}
        for h in {int(v), int(t)} - train:
            if titles[h] in profiles[u] or any(lb not in seen and lb in profiles[u] for lb in labels[h]):
                bad.append(u)
    return bad


def test_profiles_never_name_held_out_items(data):
    ds, split = data
    profiles = history_profiles(ds, split)
    assert all(profiles) and not _leaks(ds, split, profiles)
    # control: profiles built from the whole sequence name the test target as the most recent title, so
    # every user whose test item is new to them is caught
    seqs = ds.sequences()
    labels = item_labels(ds)
    leaky = [history_profile(ds, seqs[u], labels) for u in range(ds.n_users)]
    new_test = {u for u, t in zip(split.test.user_id, split.test.target) if t not in split.train_sequences[u]}
    assert len(new_test) >= 10 and new_test <= set(_leaks(ds, split, leaky))


def test_apply_user_profiles_modes(data):
    ds, split = data
    with pytest.warns(UserWarning, match="no user profiles.*data.user_profile: from_history"):
        given = apply_user_profiles(ds, split, "given")
    assert given.extra["user_profile"] == "given" and (given.users.profile == "").all()
    derived = apply_user_profiles(ds, split, "from_history")
    assert derived.users.profile.tolist() == history_profiles(ds, split) and (ds.users.profile == "").all()
    assert (apply_user_profiles(derived, split, "none").users.profile == "").all()
    with pytest.raises(DataError, match="data.user_profile: unknown value 'history'"):
        apply_user_profiles(ds, split, "history")
    no_text = RecDataset(ds.name, ds.items.assign(title="", description=""), ds.users, ds.interactions, "x.json")
    with pytest.raises(DataError, match="x.json: data.user_profile: from_history builds profiles from item"):
        apply_user_profiles(no_text, split, "from_history")


# ------------------------------------------------------------------ tokenization
def _spy_encoder(monkeypatch) -> list[str]:
    """Record the kinds of text the semantic encoder embeds (``item``/``user``)."""
    import align3gr_kit.encoders.semantic as sem

    kinds, real = [], sem.encode_texts

    def spy(texts, model=sem.DEFAULT_MODEL, cache_dir=None, kind="text", *a, **k):
        kinds.append(kind)
        return real(texts, model, cache_dir, kind, *a, **k)

    monkeypatch.setattr(sem, "encode_texts", spy)
    return kinds


def test_missing_profiles_fail_before_any_work(data, tmp_path, monkeypatch):
    import align3gr_kit.encoders.semantic as sem
    import align3gr_kit.tokenizer.pipeline as pipe

    ds, split = data

    def never(*a, **k):
        raise AssertionError("embedding or SASRec work ran before the check")

    monkeypatch.setattr(sem, "encode_texts", never)
    monkeypatch.setattr(pipe, "train_sasrec", never)
    with pytest.raises(ValueError, match="users.profile is empty") as e:
        run_tokenize(config(), ds, split, tmp_path, progress=False)
    msg = str(e.value)
    for advice in ("data.user_profile: from_history", "tokenizer.dual: false", "tokenizer.use_semantic: false"):
        assert advice in msg
    no_text = RecDataset(ds.name, ds.items.assign(title="", description=""), ds.users, ds.interactions, "x")
    with pytest.raises(ValueError, match="items have no title or description.*use_semantic: false"):
        run_tokenize(config(dual=False), no_text, split, tmp_path, progress=False)


@pytest.mark.parametrize("advice", ["from_history", "dual_false", "cf_only"])
def test_following_the_advice_works(advice, data, tmp_path, cache, monkeypatch):
    ds, split = data
    kinds = _spy_encoder(monkeypatch)
    cfg = config()  # dual, text + CF, U-I alignment: the default that failed above
    if advice == "from_history":
        ds = apply_user_profiles(ds, split, "from_history")
    else:
        cfg = config(**({"dual": False} if advice == "dual_false" else {"use_semantic": False}))
    s = run_tokenize(cfg, ds, split, tmp_path, cache_dir=cache, progress=False)
    assert s["item_collisions"] == 0 == ScidTable.load(tmp_path / "item_scids.json").collisions()
    dual = advice != "dual_false"
    assert (tmp_path / "user_scids.json").exists() == dual and (s["user_collisions"] == 0 if dual else True)
    assert ("user" in kinds) == (advice == "from_history")  # user text is embedded only for dual text SCIDs
    if advice == "dual_false":  # the user text block is the mean of the user's training items' embeddings
        item_sem, user_sem = np.load(tmp_path / "item_semantic.npy"), np.load(tmp_path / "user_semantic.npy")
        np.testing.assert_allclose(user_sem[5], item_sem[split.train_sequences[5]].mean(0), rtol=1e-5)
    if advice == "from_history":  # the next stage: every task, B2 on the derived profiles, nothing held out
        items, users = ScidTable.load(tmp_path / "item_scids.json"), ScidTable.load(tmp_path / "user_scids.json")
        sft = build_sft_dataset(ds, split, items, users, cfg.prompts, 0, progress=False)
        assert set(task_counts(sft).task) == set(ALL_TASKS) and not find_leaks(sft, split, items)
        to_profile = [r for r in sft if r["task"] == "B2" and r["variant"] == "scid->profile"]
        assert to_profile and all(r["completion"] == cut_words(ds.users.profile[r["user_id"]], cfg.prompts.max_text_words)
                                  for r in to_profile)


@pytest.mark.parametrize("rung", GENERATIVE_BASELINES[:2], ids=lambda r: r.label)
def test_item_only_baselines_tokenize_from_text(rung, data, tmp_path, cache, monkeypatch):
    ds, split = data
    kinds = _spy_encoder(monkeypatch)
    tok = {k.split(".", 1)[1]: v for k, v in rung.overrides.items() if k.startswith("tokenizer.")}
    assert tok == {"dual": False, "use_cf": False, "u2i_align": False}  # TIGER/LC-Rec: item-only SCIDs from text
    s = run_tokenize(config(**tok), ds, split, tmp_path, cache_dir=cache, progress=False)
    assert kinds == ["item"] and not (tmp_path / "user_scids.json").exists()
    items = ScidTable.load(tmp_path / "item_scids.json")
    assert items.codes.shape == (ds.n_items, 4) and s["item_collisions"] == 0 == items.collisions()
    assert np.load(tmp_path / "item_sc.npy").shape == (ds.n_items, 384)  # identity SC: the text embedding
    # the next stage runs on them too: the rung's tasks, no user SCID, nothing held out
    prompts = config(**tok).override({k: v for k, v in rung.overrides.items() if k.startswith("prompts.")}).prompts
    sft = build_sft_dataset(ds, split, items, None, prompts, 0, progress=False)
    assert set(task_counts(sft).task) == set(prompts.tasks) and not find_leaks(sft, split, items)


def test_catalogue_tokenization(catalogue_dir, tmp_path, cache):
    from align3gr_kit import viz

    ds = load_lcrec(catalogue_dir, "Shop")
    cfg = config()
    with pytest.warns(UserWarning, match=r"no interactions \(a catalogue\): tokenizer.use_cf, tokenizer.u2i_align, "
                                         r"tokenizer.dual switched off"):
        s = run_tokenize(cfg, ds, leave_one_out(ds, 20), tmp_path, cache_dir=cache, progress=False)
    items = ScidTable.load(tmp_path / "item_scids.json")
    raw = np.load(tmp_path / "item_codes_raw.npy")
    assert items.codes.shape == (N_ITEMS, 4) and s["item_collisions"] == 0 == items.collisions()
    np.testing.assert_array_equal(items.codes[:, :3], raw)
    assert s["item_collisions_before"] == N_ITEMS - len(np.unique(raw, axis=0))
    assert s["item_codebook_size"] == 8 and np.load(tmp_path / "item_codebooks.npy").shape == (3, 8, 8)
    assert s["item_utilisation"] == [round(len(set(raw[:, lv])) / 8, 4) for lv in range(3)]
    assert s["n_users"] == 0 and s["u2i_auc"] is None and s["user_levels"] is None
    for name in ("user_scids.json", "user_sc.npy", "item_cf.npy", "sasrec_history.json"):
        assert not (tmp_path / name).exists(), name
    hist = json.loads((tmp_path / "tokenizer_history.json").read_text())
    assert len(hist) == 3 and all(h["phase"] == 2 and h["auc"] is None and h["item_rq"] > 0 for h in hist)
    # the notebook-02 item views on what the catalogue wrote (TokenizeArtifacts with user_sc=None)
    art = TokenizeArtifacts(items, None, raw, None, np.load(tmp_path / "item_sc.npy"), None, hist, s)
    table = viz.collision_table(art)
    assert table.side.tolist() == ["item"] and table["collisions after"].iloc[0] == 0
    assert viz.summary_table(s).side.tolist() == ["item"]
    assert len(viz.usage_figure(raw, s["item_codebook_size"], "item").data) == 3
    assert viz.sunburst_figure(items, ds.items.title).data
    assert 0 < viz.code_category_nmi(items.codes, ds.items.category) <= 1
    # the same function called directly, with settings that need no switching: no notice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tcfg = dataclasses.replace(cfg.tokenizer, use_cf=False, u2i_align=False, dual=False)
        again = tokenize_catalogue(ds, tcfg, 0, tmp_path / "again", cache, progress=False)
    assert again["item_collisions"] == 0
    assert (tmp_path / "again" / "item_scids.json").read_text() == (tmp_path / "item_scids.json").read_text()


def test_catalogue_needs_text(catalogue_dir, tmp_path):
    ds = load_lcrec(catalogue_dir, "Shop")
    bare = RecDataset(ds.name, ds.items.assign(title="", description=""), ds.users, ds.interactions, "shop")
    with pytest.raises(ValueError, match="shop: a catalogue without interactions is tokenized from item text"):
        tokenize_catalogue(bare, config(dual=False, use_cf=False, u2i_align=False).tokenizer, 0, tmp_path)
    with pytest.raises(ValueError, match="set tokenizer.use_semantic: true"):
        tokenize_catalogue(ds, config(use_semantic=False).tokenizer, 0, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("folder, name, settings", [
    ("lcrec", "Toy", {"tokenizer.dual": False, "tokenizer.use_cf": False}),          # item-only, from text
    ("lcrec", "Toy", {"data.user_profile": "from_history"}),                          # dual, derived profiles
    ("catalogue", "Shop", {}),                                                        # catalogue only
], ids=["item-only", "dual-derived-profiles", "catalogue"])
def test_stages_run_on_amazon_style_data(folder, name, settings, lcrec_dir, catalogue_dir, tmp_path):
    """The notebooks' code path (stages 00-02 through run_stage, and 03 where there are users) on
    LC-Rec-format data without user profiles: 0 collisions after resolution in each."""
    from align3gr_kit.stages.contract import run_stage

    path = lcrec_dir if folder == "lcrec" else catalogue_dir
    cfg = RunConfig.from_yaml(
        "configs/smoke.yaml", run_name="amz", runs_dir=str(tmp_path),
        overrides={"data.dataset": "lcrec", "data.data_path": str(path), "data.name": name,
                   **{f"tokenizer.{k}": v for k, v in TINY.items()}, **settings})
    run_stage(cfg, "00_data")
    tokenized = run_stage(cfg, "01_tokenize", progress=False)
    assert tokenized["item_collisions"] == 0 and tokenized["user_collisions"] in (0, None)
    codebooks = run_stage(cfg, "02_codebooks")
    assert codebooks["item_collisions_after"] == 0
    if folder == "lcrec":
        prompts = run_stage(cfg, "03_sft_prompts", progress=False)
        assert prompts["examples"] > 0 and prompts["leaks"] == 0
        assert ("examples_B2" in prompts) == (settings.get("data.user_profile") == "from_history")
