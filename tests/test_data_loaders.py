"""Every loader: real data (../shared/data), files written by the test, and each bad-input case."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from align3gr_kit.cli import main as cli_main
from align3gr_kit.config import DataConfig
from align3gr_kit.data import DataError, find_data_path, leave_one_out, load_dataset
from align3gr_kit.data.amazon import load_amazon2018
from align3gr_kit.data.lcrec import load_lcrec
from align3gr_kit.data.movielens import load_ml100k, region_of_zip
from align3gr_kit.data.synthetic import generate_synthetic
from align3gr_kit.errors import DataWarning


# ------------------------------------------------------------------ synthetic
def test_synthetic_is_seeded_and_realistic():
    a, b, c = generate_synthetic(200, 100, seed=3), generate_synthetic(200, 100, seed=3), generate_synthetic(200, 100, seed=4)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert not a.interactions.equals(c.interactions)
    assert a.items.category.nunique() == 8 and (a.items.category != "").all()
    levels = a.interactions.rating.map({1: "d", 2: "n", 3: "n", 4: "l", 5: "l"}).value_counts(normalize=True)
    assert set(levels.index) == {"d", "n", "l"} and levels.min() > 0.1
    # users buy mostly within their stated interests: the profile text names the category of most purchases
    cat = a.items.category.to_numpy()
    hits = [cat[i].lower() in a.users.profile.iloc[u] for u, i in zip(a.interactions.user_id, a.interactions.item_id)]
    assert np.mean(hits) > 0.7


def test_default_dataset_size_and_long_tail():
    ds = load_dataset(DataConfig())
    assert (ds.n_users, ds.n_items) == (1000, 500)
    assert ds.interactions.groupby("user_id").size().min() >= 5
    counts = np.sort(np.bincount(ds.interactions.item_id, minlength=500))[::-1]
    assert counts[:50].sum() / counts.sum() > 0.3  # the top 10% of items hold far more than 10%
    assert counts.min() >= 1  # yet every item is bought by someone


# ------------------------------------------------------------------ ml-100k
@pytest.mark.shared_data
def test_ml100k_real_files(shared_data):
    ds = load_ml100k(shared_data / "ml-100k")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1682, 100000)
    assert ds.interactions.rating.value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    assert ds.interactions.groupby("user_id").size().min() >= 20
    assert ds.items.title.iloc[0] == "Toy Story (1995)"
    assert ds.items.categories.iloc[0] == ["Animation", "Children's", "Comedy"]
    assert ds.users.profile.iloc[0] == "A 24-year-old male technician living in the Mountain West."
    sp = leave_one_out(ds, 20)
    assert len(sp.test) == 943 and sp.test.history.map(len).max() == 20


@pytest.mark.shared_data
def test_cli_data_stats_ml100k(shared_data, capsys):
    assert cli_main(["data", "stats", "--dataset", "ml-100k", "--data-path", str(shared_data / "ml-100k")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["items"], out["interactions"], out["test_users"], out["has_ratings"]) == (943, 1682, 100000, 943, True)


def test_region_of_zip():
    assert region_of_zip("85711") == "the Mountain West"
    assert region_of_zip("02139") == "New England"
    assert region_of_zip("T8H1N") == "outside the US"


def _write_ml100k(folder, data_lines, item_lines=None, user_lines=None, item_encoding="latin-1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(data_lines) + "\n")
    flags = "|".join(["0"] * 18)
    items = item_lines or [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|{flags}" for i in (1, 2, 3)]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode(item_encoding))
    users = user_lines or ["1|24|M|technician|85711", "2|53|F|other|94043"]
    (folder / "u.user").write_text("\n".join(users) + "\n")


GOOD_DATA = ["1\t1\t5\t100", "1\t2\t3\t101", "1\t3\t1\t102", "2\t1\t4\t100", "2\t2\t2\t105", "2\t3\t5\t106"]


def test_ml100k_small_files(tmp_path):
    _write_ml100k(tmp_path, GOOD_DATA, item_lines=[f"{i}|Café {i} (1995)|01-Jan-1995||u|0|1|{'|'.join(['0'] * 17)}" for i in (1, 2, 3)])
    ds = load_ml100k(tmp_path)
    assert ds.items.title.iloc[0] == "Café 1 (1995)" and ds.items.categories.iloc[0] == ["Action"]
    assert ds.has_ratings and ds.interactions.rating.tolist()[:3] == [5.0, 3.0, 1.0]


def test_ml100k_malformed_line(tmp_path):
    _write_ml100k(tmp_path, GOOD_DATA[:3] + ["2 1 4 100"] + GOOD_DATA[4:])
    with pytest.raises(DataError, match=r"u\.data: line 4 has 1 tab-separated fields, expected 4"):
        load_ml100k(tmp_path)


def test_ml100k_missing_file(tmp_path):
    _write_ml100k(tmp_path, GOOD_DATA)
    (tmp_path / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: file missing.*download"):
        load_ml100k(tmp_path)


def test_ml100k_unknown_item(tmp_path):
    _write_ml100k(tmp_path, GOOD_DATA + ["2\t99\t4\t200"])
    with pytest.raises(DataError, match=r"user '2' names item '99', which is not in the item table"):
        load_ml100k(tmp_path)


def test_ml100k_duplicate_item_ids(tmp_path):
    flags = "|".join(["0"] * 18)
    _write_ml100k(tmp_path, GOOD_DATA, item_lines=[f"{i}|M (1995)|||u|0|{flags}" for i in (1, 2, 2, 3)])
    with pytest.raises(DataError, match=r"duplicate item id '2'"):
        load_ml100k(tmp_path)


def test_ml100k_wrong_encoding(tmp_path):
    _write_ml100k(tmp_path, GOOD_DATA)
    (tmp_path / "u.data").write_bytes("1\t1\t5\t100\n1\t2\t5\t1é1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"u\.data: not ASCII at line 2 \(byte offset 17\): byte 0xe9"):
        load_ml100k(tmp_path)


def test_ml100k_too_few_interactions(tmp_path):
    _write_ml100k(tmp_path, GOOD_DATA[:3] + GOOD_DATA[3:5])
    with pytest.raises(DataError, match=r"user '2' has 2 interaction\(s\)"):
        load_ml100k(tmp_path)


# ------------------------------------------------------------------ lcrec
@pytest.mark.shared_data
def test_lcrec_instruments(shared_data, capsys):
    path = shared_data / "amazon-instruments"
    assert cli_main(["data", "stats", "--dataset", "lcrec", "--data-path", str(path), "--name", "Instruments"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["users"], out["items"], out["interactions"], out["test_users"]) == (24772, 9922, 206153, 24772)
    assert out["has_ratings"] is False
    ds = load_lcrec(path, "Instruments")
    # item ids are the file's indices, users keep their list order
    first = json.loads((path / "Instruments.inter.json").read_text())["0"]
    assert ds.sequences()[0].tolist() == first
    assert ds.extra["reference_index"].endswith("Instruments.index.json")


def _write_lcrec(folder, inter, items=None, name="Toy"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter.json").write_text(json.dumps(inter))
    if items is not None:
        (folder / f"{name}.item.json").write_text(json.dumps(items))


def test_lcrec_small_with_text(tmp_path):
    items = {str(i): {"title": f"T{i}", "description": ["d", "e"], "categories": "A, B"} for i in range(4)}
    _write_lcrec(tmp_path, {"0": [0, 1, 2], "1": [3, 2, 1, 0]}, items)
    ds = load_lcrec(tmp_path, "Toy")
    assert ds.items.description.iloc[0] == "d e" and ds.items.categories.iloc[0] == ["A", "B"]
    assert ds.sequences()[1].tolist() == [3, 2, 1, 0] and not ds.has_ratings


def test_lcrec_malformed_json(tmp_path):
    tmp_path.joinpath("Toy.inter.json").write_text('{"0": [0, 1, 2],\n "1": [3, 4')
    with pytest.raises(DataError, match=r"Toy\.inter\.json: malformed JSON at line 2"):
        load_lcrec(tmp_path, "Toy")


def test_lcrec_bad_values_and_unknown_items(tmp_path):
    _write_lcrec(tmp_path, {"0": [0, 1, "x"]})
    with pytest.raises(DataError, match=r"user '0': the value must be a list of integer item indices"):
        load_lcrec(tmp_path, "Toy")
    _write_lcrec(tmp_path, {"0": [0, 1, 7]}, {str(i): {"title": "t"} for i in range(3)})
    with pytest.raises(DataError, match=r"names item '7', which is not in the item table"):
        load_lcrec(tmp_path, "Toy")


def test_lcrec_item_without_text(tmp_path):
    _write_lcrec(tmp_path, {"0": [0, 1, 2]}, {"0": {"title": "a"}, "1": {"title": ""}, "2": {"title": "c"}})
    with pytest.raises(DataError, match=r"item '1' has neither 'title' nor 'description'"):
        load_lcrec(tmp_path, "Toy")


def test_lcrec_non_utf8(tmp_path):
    tmp_path.joinpath("Toy.inter.json").write_bytes(b'{"0": [0, 1, 2], "\xff": [1]}')
    with pytest.raises(DataError, match="not UTF-8"):
        load_lcrec(tmp_path, "Toy")


# ------------------------------------------------------------------ amazon2018
def _review(u, i, r, t):
    return {"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t, "reviewText": "ok"}


def _write_amazon(folder, reviews, meta, gz=True, literal_meta=False):
    folder.mkdir(parents=True, exist_ok=True)
    rev = "\n".join(json.dumps(r) for r in reviews) + "\n"
    met = "\n".join(repr(m) if literal_meta else json.dumps(m) for m in meta) + "\n"
    if gz:
        with gzip.open(folder / "Toys_5.json.gz", "wt") as fh:
            fh.write(rev)
        with gzip.open(folder / "meta_Toys.json.gz", "wt") as fh:
            fh.write(met)
    else:
        (folder / "Toys_5.json").write_text(rev)
        (folder / "meta_Toys.json").write_text(met)


def _amazon_world(n_users=6, n_items=6):
    reviews = [_review(f"U{u}", f"A{i}", 1 + (u + i) % 5, 1000 + 10 * i + u) for u in range(n_users) for i in range(n_items)]
    meta = [{"asin": f"A{i}", "title": f"Toy {i}", "description": ["<b>Fun</b> &amp; safe"], "brand": "B",
             "category": ["Toys", f"Sub{i % 2}"]} for i in range(n_items)]
    return reviews, meta


@pytest.mark.parametrize("gz,literal", [(True, False), (False, True)])
def test_amazon2018_small_files(tmp_path, gz, literal):
    reviews, meta = _amazon_world()
    # a user with 2 reviews and an item with 2 reviews must be removed by the 5-core filter
    reviews += [_review("Uthin", "A0", 5, 5000), _review("Uthin", "A1", 4, 5001)]
    meta.append({"asin": "Arare", "title": "Rare"})
    reviews += [_review("U0", "Arare", 5, 6000), _review("U1", "Arare", 5, 6001)]
    reviews.append(_review("U0", "A0", 1, 9999))  # duplicate (user, item): the earliest review is kept
    meta.append(dict(meta[0]))  # repeated metadata record
    _write_amazon(tmp_path, reviews, meta, gz=gz, literal_meta=literal)
    with pytest.warns(DataWarning, match=r"dropped 1 repeated \(user, item\) event"):
        ds = load_amazon2018(tmp_path, "Toys")
    assert ds.extra["repeat_events_dropped"] == 1
    assert (ds.n_users, ds.n_items) == (6, 6)
    assert "Uthin" not in set(ds.users.raw_id) and "Arare" not in set(ds.items.raw_id)
    assert ds.items.description.iloc[0] == "Fun & safe" and ds.items.category.iloc[0] == "Sub0"
    assert len(ds.interactions) == 36 and ds.has_ratings


def test_amazon2018_errors(tmp_path):
    reviews, meta = _amazon_world()
    bad = [dict(r) for r in reviews]
    del bad[3]["overall"]
    _write_amazon(tmp_path / "a", bad, meta)
    with pytest.raises(DataError, match=r"Toys_5\.json\.gz: line 4 lacks field\(s\) \['overall'\]"):
        load_amazon2018(tmp_path / "a", "Toys")
    _write_amazon(tmp_path / "b", reviews, meta[1:])  # A0 has no metadata
    with pytest.raises(DataError, match=r"names item 'A0', which is not in the item table"):
        load_amazon2018(tmp_path / "b", "Toys")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"Toys_5\.json\[\.gz\] missing"):
        load_amazon2018(tmp_path / "c", "Toys")
    _write_amazon(tmp_path / "d", reviews, meta, gz=False)
    (tmp_path / "d" / "meta_Toys.json").write_text("{'asin': 'A0', 'title': __import__('os').getcwd()}\n")
    with pytest.raises(DataError, match="neither JSON nor a Python literal"):
        load_amazon2018(tmp_path / "d", "Toys")


# ------------------------------------------------------------------ where data is found
def test_find_data_path_order_and_error(tmp_path, monkeypatch):
    explicit = tmp_path / "mine"
    explicit.mkdir()
    assert find_data_path(DataConfig(dataset="ml-100k", data_path=str(explicit))) == explicit.resolve()
    with pytest.raises(DataError, match="no such folder"):
        find_data_path(DataConfig(dataset="ml-100k", data_path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"no data found in .*NoSuchCategory.*Amazon Review Data 2018"):
        find_data_path(DataConfig(dataset="amazon2018", name="NoSuchCategory"))
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(DataConfig(dataset="no-such-dataset-anywhere", data_path=str(explicit)))


def test_max_users_and_kcore_options():
    ds = load_dataset(DataConfig(synthetic_users=100, synthetic_items=60, max_users=30))
    assert ds.n_users == 30 and ds.users.raw_id.iloc[-1] == "U00029"
    k = load_dataset(DataConfig(synthetic_users=100, synthetic_items=60, min_interactions=8))
    assert k.interactions.groupby("user_id").size().min() >= 8
    assert k.interactions.groupby("item_id").size().min() >= 8
