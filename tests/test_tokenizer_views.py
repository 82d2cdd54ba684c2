"""The token-level views (residual walk, collision drill-down, joint map) on the finished smoke run,
checked against independent numpy references, and notebooks 01/02's stated facts against the code."""

from __future__ import annotations

import math
import re
import shutil

import nbformat
import numpy as np
import pytest
import torch

from align3gr_kit.config import TokenizerConfig
from align3gr_kit.stages.contract import get_stage
from align3gr_kit.tokenizer import views
from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts
from align3gr_kit.utils import project_root


@pytest.fixture(scope="module")
def run(smoke_run):
    """``(cfg, dataset, split, tokenizer artifacts)`` of the smoke run."""
    data = get_stage("00_data").load_artifacts(smoke_run.run_dir / "00_data")
    return smoke_run, data.dataset, data.split, TokenizeArtifacts.load(smoke_run.run_dir / "01_tokenize")


def _numpy_walk(folder, side: str, sc: np.ndarray, codebooks: np.ndarray):
    """Reference: the RQ-VAE's encoder/decoder (Linear, exact GELU, Linear) in float64 numpy from the
    saved weights, nearest codes from the saved ``<side>_codebooks.npy``."""
    w = {k: v.double().numpy() for k, v in torch.load(folder / "tokenizer.pt", weights_only=True).items()}
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))

    def mlp(x, name):
        h = gelu(x @ w[f"{side}_rq.{name}.0.weight"].T + w[f"{side}_rq.{name}.0.bias"])
        return h @ w[f"{side}_rq.{name}.2.weight"].T + w[f"{side}_rq.{name}.2.bias"]

    r = mlp(sc.astype(np.float64), "encoder")
    norms, codes, dist_gap = [np.linalg.norm(r, axis=1)], [], []
    for book in codebooks.astype(np.float64):
        d = ((r[:, None, :] - book[None]) ** 2).sum(-1)
        codes.append(d.argmin(1))
        dist_gap.append(np.sort(d, axis=1)[:, 1] - d.min(1))  # margin of the choice, for near ties
        r = r - book[codes[-1]]
        norms.append(np.linalg.norm(r, axis=1))
    quantized = sum(book[c] for book, c in zip(codebooks.astype(np.float64), codes))
    recon = ((mlp(quantized, "decoder") - sc) ** 2).mean(1)
    return np.stack(codes, 1), np.stack(norms, 1), recon, np.stack(dist_gap, 1)


@pytest.mark.parametrize("side", ["item", "user"])
def test_residual_walk_recomputes_stored_codes_and_residuals(run, side):
    cfg, ds, split, art = run
    sc, raw, books = (art.item_sc, art.item_raw, art.item_codebooks) if side == "item" else \
        (art.user_sc, art.user_raw, art.user_codebooks)
    codes, norms, recon, gap = _numpy_walk(art.folder, side, sc, books)
    clear = (gap > 1e-5).all(1)  # rows without a float32/float64 near tie
    assert clear.mean() > 0.95
    assert np.array_equal(codes[clear], raw[clear])
    w = views.walk(art, side)
    assert np.array_equal(w.codes, raw) and w.residual_norms.shape == (len(sc), raw.shape[1] + 1)
    np.testing.assert_allclose(w.residual_norms[clear], norms[clear], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w.recon_error[clear], recon[clear], rtol=1e-3, atol=1e-6)
    # the last residual is what the stored codes leave of z: ||z - sum_l codebook_l[code_l]||
    left = w.z - sum(books[lv][raw[:, lv]] for lv in range(raw.shape[1]))
    np.testing.assert_allclose(w.residual_norms[:, -1], np.linalg.norm(left, axis=1), rtol=1e-4, atol=1e-5)


def test_walk_table_prefix_counts_and_digit(run):
    cfg, ds, split, art = run
    e = int(np.bincount(np.unique(art.item_raw, axis=0, return_inverse=True)[1].reshape(-1)).argmax())
    e = int(np.flatnonzero((art.item_raw == np.unique(art.item_raw, axis=0)[e]).all(1))[1])  # 2nd of the largest group
    t = views.walk_table(art, ds, "item", e)
    levels = art.item_raw.shape[1]
    for lv in range(levels):
        expect = sum(tuple(r[: lv + 1]) == tuple(art.item_raw[e, : lv + 1]) for r in art.item_raw)
        assert t["share prefix"].iloc[lv + 1] == expect
        assert t.token.iloc[lv + 1] == art.items.level_token(lv, art.item_raw[e, lv])
    assert t.token.iloc[-1] == f"<{'abcdefgh'[levels]}_1>" and art.items.codes[e, levels] == 1
    fig, table = views.residual_walk(art, ds, "user", n=3)
    assert table.id.unique().tolist() == [0, 1, 2]
    assert (table.level == "nearest items").sum() == 3  # the smoke run aligns users and items in one space
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 3 and [sum(b.args[0]["visible"]) for b in buttons] == [2, 2, 2]


def test_collision_groups_match_stored_scids(run):
    cfg, ds, split, art = run
    g = views.collision_groups(art, ds, "item")
    ref: dict[tuple, list[int]] = {}
    for i, r in enumerate(art.item_raw):
        ref.setdefault(tuple(int(x) for x in r), []).append(i)
    ref = {k: v for k, v in ref.items() if len(v) > 1}
    assert g.group.nunique() == len(ref)
    sizes = g.drop_duplicates("group")["size"].tolist()
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == max(map(len, ref.values()))
    assert int((g.drop_duplicates("group")["size"] - 1).sum()) == art.summary["item_collisions_before"]
    for _, members in g.groupby("group"):
        ids = members.id.tolist()
        assert ids == ref[tuple(int(x) for x in art.item_raw[ids[0]])]  # the whole group, in id order
        assert members.digit.tolist() == art.items.codes[ids, -1].tolist() == list(range(len(ids)))
        assert members.SCID.tolist() == [art.items.string(i) for i in ids]
        assert members.name.tolist() == ds.items.title.iloc[ids].tolist()
    fig, _ = views.collision_drilldown(art, ds, n_groups=4)
    assert len(fig.layout.updatemenus[0].buttons) == min(4, len(ref)) and len(fig.data) == 1 + min(4, len(ref))


def test_joint_map_points_and_nearest_items(run, tmp_path):
    cfg, ds, split, art = run
    users = [0, 5, 7]
    fig, table = views.joint_map(art, ds, split, users=users, k=5)
    items_tr, users_tr = fig.data[0], fig.data[1]
    assert len(items_tr.x) == ds.n_items and len(users_tr.x) == ds.n_users
    dist = np.linalg.norm(art.user_sc[users][:, None] - art.item_sc[None], axis=-1)  # unit vectors: same order
    expect = np.argsort(dist, axis=1)[:, :5]
    for j, u in enumerate(users):
        assert table[table.user == u].item.tolist() == expect[j].tolist()
    assert len(fig.layout.updatemenus[0].buttons) == len(users)
    trained = table["in split"] == "trained on"
    assert all(i in split.train_sequences[u] for u, i in zip(table.user[trained], table.item[trained]))
    # beside it, a run without U-I alignment when one exists (the same artifacts stand in for it here)
    fig2, table2 = views.joint_map(art, ds, users=users, k=5, other=art)
    assert len(fig2.data) == 2 * len(fig.data) and set(table2["map"]) == {"this run", "without U-I alignment"}


def test_unaligned_tokenizer_uses_the_token_tables_run_name(run, tmp_path, monkeypatch):
    """``unaligned_tokenizer`` looks where ``ablate --table token`` puts its "w/o U-I align" row."""
    from align3gr_kit.report import ablation
    from align3gr_kit.report.specs import table_rungs
    from align3gr_kit.stages import runner, s02_codebooks

    cfg, ds, split, art = run
    base = cfg.override({"runs_dir": str(tmp_path)})
    made = []

    def fake_pipeline(c, *a, **kw):
        made.append(c)
        return {"ok": False, "stages": [{"status": "failed", "stage": "01_tokenize", "error": "x", "notebook": "n"}]}

    monkeypatch.setattr(runner, "run_pipeline", fake_pipeline)
    ablation.run_rungs(base, str(project_root() / "configs" / "smoke.yaml"), table_rungs("token"), [base.seed], "token")
    twin = next(c for c in made if not c.tokenizer.u2i_align)
    found, sentence = s02_codebooks.unaligned_tokenizer(base)
    assert found is None and twin.run_name in sentence and "u2i_align=false" in sentence
    shutil.copytree(cfg.run_dir / "01_tokenize", tmp_path / twin.run_name / "01_tokenize")
    found, name = s02_codebooks.unaligned_tokenizer(base)
    assert name == twin.run_name and np.array_equal(found.item_sc, art.item_sc)


def test_prefix_figure_lists_every_first_level_code(run):
    cfg, ds, split, art = run
    fig = views.prefix_figure(art, ds, "item", level=1, limit=5)
    counts = np.bincount(art.items.codes[:, 0])
    assert len(fig.data) == int((counts > 0).sum())
    first = fig.layout.updatemenus[0].buttons[0]
    assert first.label == f"{art.items.level_token(0, counts.argmax())} ({counts.max()})"


def _markdown(name: str) -> str:
    nb = nbformat.read(project_root() / "notebooks" / name, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_notebook_text_matches_the_code():
    """What notebooks 01/02 state in prose (defaults, weights, token forms, papers) holds for the code."""
    t = TokenizerConfig()
    md01 = _markdown("01_tokenize.ipynb")
    assert f"{t.levels} levels × {t.codebook_size} codes × {t.code_dim} dimensions" in md01
    assert f"$\\alpha={t.phase2_alpha}, \\gamma={t.phase2_gamma:g}$" in md01
    # token forms: levels + 1 tokens per SCID (the uniqueness level), users' prefixed with u
    assert t.unique_users
    letters = "abcdefgh"[: t.levels + 1]
    forms = re.sub(r"(<u?[a-h]_)[^<>]*>", r"\1", md01)
    runs = re.findall(r"(?:<u[a-h]_)+", forms)  # each written user SCID, as its run of tokens
    assert runs and all(r == "".join(f"<u{c}_" for c in letters) for r in runs)
    for md in (md01, _markdown("02_codebooks.ipynb")):
        for arxiv in ("2511.11255", "2602.22632", "2311.09049", "2305.05065"):
            assert f"arxiv.org/abs/{arxiv}" in md
        assert "Try this" in md and not re.search(r"\d+\s*(s|min|minutes|seconds)\b.*smoke", md)
