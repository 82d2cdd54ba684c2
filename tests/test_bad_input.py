"""Issue 13: bad input never passes silently.

One row per case of the issue's table (the rows of the loaders, the given CF embeddings and the
command line; config paths, config syntax and failing stages under ``run`` are tested with the stage
runner). Each test writes its input into ``tmp_path`` and checks the parts of the one-line message
(file, line/record, field, what was found, the fix), exit status 2 without a traceback for the command
line, and that the input folder is byte-for-byte as it was (nothing half-written beside it).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from align3gr_kit.cli import main as cli_main
from align3gr_kit.data import DataError, leave_one_out
from align3gr_kit.data.lcrec import load_lcrec
from align3gr_kit.data.movielens import load_ml100k
from align3gr_kit.encoders.sasrec import load_item_cf
from align3gr_kit.errors import DataWarning

FLAGS = "|".join(["0"] * 18)


# ------------------------------------------------------------------ writers of small datasets
def _ml100k(folder: Path, data: list[str] | None = None, item_bytes: bytes | None = None,
            data_bytes: bytes | None = None) -> list[str]:
    """ml-100k files: 100 users x 5 items (500 lines of ``u.data``) unless ``data`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = [f"{u}\t{i}\t{1 + (u + i) % 5}\t{881250000 + 10 * i + u}" for u in range(1, 101) for i in range(1, 6)]
    (folder / "u.data").write_bytes(data_bytes if data_bytes is not None else ("\n".join(data) + "\n").encode())
    items = "\n".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|{FLAGS}" for i in range(1, 6)) + "\n"
    (folder / "u.item").write_bytes(item_bytes if item_bytes is not None else items.encode("latin-1"))
    (folder / "u.user").write_text("\n".join(f"{u}|30|F|writer|02139" for u in range(1, 101)) + "\n")
    return ["data", "stats", "--dataset", "ml-100k", "--data-path", str(folder)]


def _lcrec(folder: Path, text: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Toy.inter.json").write_text(text)
    return ["data", "stats", "--dataset", "lcrec", "--data-path", str(folder), "--name", "Toy"]


def _amazon(folder: Path, bad_line: str | None = None) -> list[str]:
    """6 users x 6 items of 5-core reviews (plain JSON lines); ``bad_line`` replaces line 4."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 1 + (u + i) % 5,
                         "unixReviewTime": 1000 + 10 * i + u}) for u in range(6) for i in range(6)]
    if bad_line is not None:
        lines[3] = bad_line
    with gzip.open(folder / "Toys_5.json.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with gzip.open(folder / "meta_Toys.json.gz", "wt") as fh:
        fh.write("\n".join(json.dumps({"asin": f"A{i}", "title": f"Toy {i}"}) for i in range(6)) + "\n")
    return ["data", "stats", "--dataset", "amazon2018", "--data-path", str(folder), "--name", "Toys"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ rows answered by one error line
GOOD_500 = [f"{u}\t{i}\t{1 + (u + i) % 5}\t{881250000 + 10 * i + u}" for u in range(1, 101) for i in range(1, 6)]
DEEP = "[" * 200_000 + "]" * 200_000

ERROR_ROWS = [
    pytest.param(lambda d: _ml100k(d, GOOD_500 + ["12\tnot-a-number\t3\t881250949"]),
                 ["u.data", "line 501", "field 'item'", "'not-a-number' is not an integer", "fix or delete the line"],
                 id="ml100k-non-integer-item-id"),
    pytest.param(lambda d: _ml100k(d, data_bytes=b""),
                 ["u.data", "the file is empty", "data download ml-100k"], id="ml100k-empty-u.data"),
    pytest.param(lambda d: _ml100k(d, item_bytes=f"1|Am\u00e9lie (2001)|||u|0|{FLAGS}\n".encode("utf-16")),
                 ["u.item", "UTF-16 LE", "byte-order mark ff fe at byte 0", "iconv -f UTF-16 -t UTF-8 u.item"],
                 id="ml100k-u.item-utf16"),
    pytest.param(lambda d: _ml100k(d, item_bytes=f"1|Movie (1995)|||u|0|{FLAGS}\n".encode("utf-16-le")),
                 ["u.item", "UTF-16 without a byte-order mark", "NUL byte at byte offset 1", "iconv"],
                 id="ml100k-u.item-utf16-no-bom"),
    pytest.param(lambda d: _ml100k(d, GOOD_500[:41] + ["9\t1\t3\t12345678901234567890"] + GOOD_500[41:]),
                 ["u.data", "line 42", "field 'timestamp'", "12345678901234567890 is outside 0..", "unix seconds"],
                 id="ml100k-20-digit-timestamp"),
    pytest.param(lambda d: _ml100k(d, GOOD_500[:9] + ["3\t2\t0\t881250000"] + GOOD_500[9:]),
                 ["u.data", "line 10", "field 'rating'", "0 is outside 1..5", "ratings are 1-5"],
                 id="ml100k-rating-0"),
    pytest.param(lambda d: _ml100k(d, GOOD_500[:99] + ["3\t2\t6\t881250000"] + GOOD_500[99:]),
                 ["u.data", "line 100", "field 'rating'", "6 is outside 1..5", "ratings are 1-5"],
                 id="ml100k-rating-6"),
    pytest.param(lambda d: _lcrec(d, "{}"),
                 ["Toy.inter.json", "holds no users", 'e.g. {"0": [3, 17, 5]}'], id="lcrec-empty-object"),
    pytest.param(lambda d: _lcrec(d, json.dumps({"0": [0, 1, 2], "1": [], "2": [2, 1, 0]})),
                 ["Toy.inter.json", "user '1'", "the item list is empty", "remove the user"],
                 id="lcrec-user-without-items"),
    pytest.param(lambda d: _lcrec(d, '{\n "0": [0, 1, 2],\n "1": [1, 2, 0],\n "0": [2, 1, 0]\n}'),
                 ["Toy.inter.json", "line 4", "key '0' appears twice", "merge the two entries"],
                 id="lcrec-duplicate-user-key"),
    pytest.param(lambda d: _lcrec(d, '{"0": ' + DEEP + "}"),
                 ["Toy.inter.json", "nested deeper than Python's parser allows", "re-export"],
                 id="lcrec-deep-nesting"),
    pytest.param(lambda d: _amazon(d, DEEP),
                 ["Toys_5.json.gz", "line 4", "nested deeper than Python's parser allows"],
                 id="amazon2018-deep-nesting"),
    pytest.param(lambda d: _amazon(d, '{"reviewerID": "U0", "asin": "A3", "overall": "nan", "unixReviewTime": 1030}'),
                 ["Toys_5.json.gz", "line 4", "field 'overall'", "'nan' is not a finite number",
                  "a number from 1 to 5"],
                 id="amazon2018-overall-nan"),
    pytest.param(lambda d: _amazon(d, '{"reviewerID": "U0", "asin": "A3", "overall": 4, "overall": 5, '
                                      '"unixReviewTime": 1030}'),
                 ["Toys_5.json.gz", "line 4", "key 'overall' appears twice"], id="amazon2018-duplicate-key"),
    pytest.param(lambda d: _amazon(d, "{'reviewerID': 'U0', 'asin': 'A3', 'overall': 4.0, 'overall': 5.0, "
                                      "'unixReviewTime': 1030}"),
                 ["Toys_5.json.gz", "line 4", "key 'overall' appears twice in one record"],
                 id="amazon2018-python-literal-duplicate-key"),
]


@pytest.mark.parametrize("write,parts", ERROR_ROWS)
def test_bad_input_is_one_located_line(tmp_path, capsys, write, parts):
    folder = tmp_path / "data"
    argv = write(folder)
    before = _snapshot(tmp_path)
    assert cli_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no JSON result for a failed command
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], f"{part!r} missing from {lines[0]!r}"
    assert _snapshot(tmp_path) == before  # nothing written, nothing half-written


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    argv = _ml100k(tmp_path, data_bytes=b"")
    with pytest.raises(DataError, match=r"u\.data: the file is empty"):
        cli_main(argv + ["--debug"])
    with pytest.raises(DataError, match=r"u\.data: the file is empty"):
        cli_main(["--debug"] + argv)
    monkeypatch.setenv("ALIGN3GR_DEBUG", "1")
    with pytest.raises(DataError, match=r"u\.data: the file is empty"):
        cli_main(argv)
    monkeypatch.setenv("ALIGN3GR_DEBUG", "0")
    assert cli_main(argv) == 2


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import align3gr_kit.data as data

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(data, "load_dataset", broken)
    with pytest.raises(ZeroDivisionError):
        cli_main(_ml100k(tmp_path))


# ------------------------------------------------------------------ rows handled by a documented rule
def test_repeated_pair_keeps_the_first_event_and_says_so(tmp_path, capsys):
    # user 7 rated item 3 once (time 881250037); four more events of the pair: three earlier ones and a
    # late one that, kept, would be the test target while an earlier copy sits in the history
    data = GOOD_500 + [f"7\t3\t4\t{t}" for t in (881249001, 881249002, 881249003, 881299999)]
    argv = _ml100k(tmp_path, data)
    before = _snapshot(tmp_path)
    assert cli_main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["interactions"] == 500
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "u.data: dropped 4 repeated (user, item) event(s)" in warning[0]
    assert "user '7', item '3'" in warning[0] and "Traceback" not in err
    assert _snapshot(tmp_path) == before
    with pytest.warns(DataWarning, match="dropped 4 repeated"):
        ds = load_ml100k(tmp_path)
    assert ds.extra["repeat_events_dropped"] == 4
    user = int(ds.users.index[ds.users.raw_id == "7"][0])
    item = int(ds.items.index[ds.items.raw_id == "3"][0])
    # the first event (time 881249001) is kept: item 3 is now user 7's first item, not the test target
    assert ds.sequences()[user].tolist()[0] == item
    split = leave_one_out(ds)
    for part in (split.train, split.valid, split.test):
        assert not any(t in h for t, h in zip(part.target, part.history))


def test_ml100k_user_without_ratings_is_named(tmp_path):
    _ml100k(tmp_path, [line for line in GOOD_500 if not line.startswith("42\t")])
    with pytest.warns(DataWarning, match=r"u\.user: 1 user\(s\) have no rating in u\.data and are left out "
                                         r"\(e\.g\. user '42'\)"):
        ds = load_ml100k(tmp_path)
    assert ds.n_users == 99 and "42" not in set(ds.users.raw_id)


def test_lcrec_repeated_item_keeps_its_first_position(tmp_path):
    _lcrec(tmp_path, json.dumps({"0": [0, 1, 2, 3, 1], "1": [3, 2, 1, 0]}))
    with pytest.warns(DataWarning, match=r"Toy\.inter\.json: dropped 1 repeated"):
        ds = load_lcrec(tmp_path, "Toy")
    assert ds.sequences()[0].tolist() == [0, 1, 2, 3]


def test_u_item_saved_as_utf8_is_read_as_utf8(tmp_path, capsys):
    items = "".join(f"{i}|{t}|||u|0|{FLAGS}\n" for i, t in
                    [(1, "Amélie (2001)"), (2, "Château (1995)"), (3, "M (1931)"), (4, "N (1995)"), (5, "O (1995)")])
    argv = _ml100k(tmp_path, item_bytes=items.encode("utf-8"))
    assert cli_main(argv) == 0 and "error" not in capsys.readouterr().err
    ds = load_ml100k(tmp_path)
    assert ds.items.title.tolist()[:2] == ["Amélie (2001)", "Château (1995)"]
    # the original GroupLens encoding (latin-1) still reads the same titles
    _ml100k(tmp_path, item_bytes=items.encode("latin-1"))
    assert load_ml100k(tmp_path).items.title.tolist()[:2] == ["Amélie (2001)", "Château (1995)"]


def test_utf8_byte_order_mark_is_skipped(tmp_path):
    _ml100k(tmp_path, data_bytes=b"\xef\xbb\xbf" + ("\n".join(GOOD_500) + "\n").encode())
    assert len(load_ml100k(tmp_path).interactions) == 500


# ------------------------------------------------------------------ given CF embeddings
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cf_embeddings_any_float_tensor_loads(tmp_path, dtype):
    # the shipped Instruments-32d-sasrec.pt is a float32 tensor that requires grad
    emb = torch.arange(12, dtype=torch.float32).reshape(4, 3).to(dtype).requires_grad_(True)
    torch.save(emb, tmp_path / "cf.pt")
    got = load_item_cf(tmp_path / "cf.pt", 4)
    assert got.dtype == np.float32 and got.shape == (4, 3)
    np.testing.assert_array_equal(got, np.arange(12, dtype=np.float32).reshape(4, 3))


def test_cf_embeddings_npy_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.save(tmp_path / "cf.npy", ref.astype(np.float64))
    save_file({"embeddings": torch.from_numpy(ref)}, str(tmp_path / "cf.safetensors"))
    np.testing.assert_array_equal(load_item_cf(tmp_path / "cf.npy", 4), ref)
    np.testing.assert_array_equal(load_item_cf(tmp_path / "cf.safetensors", 4), ref)


CF_ROWS = [
    pytest.param(lambda p: torch.save(torch.ones(5, 3), p),
                 ["cf.pt", "tokenizer.cf_embeddings", "shape [5, 3]", "expected [n_items, d] = [4, d]",
                  "padding row 0", "one row per item"], id="wrong-rows"),
    pytest.param(lambda p: torch.save(torch.ones(4), p),
                 ["shape [4]", "expected [n_items, d] = [4, d]"], id="one-dimensional"),
    pytest.param(lambda p: torch.save(torch.ones(4, 3, dtype=torch.int64), p),
                 ["holds torch.int64", "expected floating-point embeddings [4, d]"], id="integer-tensor"),
    pytest.param(lambda p: torch.save({"item_emb.weight": torch.ones(5, 3), "pos_emb.weight": torch.ones(20, 3)}, p),
                 ["found a dict of 2 entries", "item_emb.weight [5, 3]", "save the tensor alone"], id="state-dict"),
    pytest.param(lambda p: torch.save(torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1, 1], [1, 1]]), p),
                 ["row 1", "NaN or infinity"], id="nan-row"),
    pytest.param(lambda p: p.write_bytes(b"not a torch file at all"),
                 ["cf.pt", "not a torch tensor file", ".safetensors or a .npy"], id="not-torch"),
]


@pytest.mark.parametrize("write,parts", CF_ROWS)
def test_cf_embeddings_refused_with_the_expected_shape(tmp_path, write, parts):
    write(tmp_path / "cf.pt")
    with pytest.raises(DataError) as e:
        load_item_cf(tmp_path / "cf.pt", 4)
    msg = str(e.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} missing from {msg!r}"


class _Payload:
    """A pickle that, if unpickled unsafely, creates a folder: the test checks it never appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_cf_embeddings_unsafe_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"emb": torch.ones(4, 3), "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DataError) as e:
        load_item_cf(tmp_path / "evil.pt", 4)
    msg = str(e.value)
    assert not marker.exists()
    assert "evil.pt" in msg and "not a plain tensor file" in msg and "mkdir" in msg  # names what it would run
    assert "torch.save(tensor.detach().float().contiguous(), 'cf.pt')" in msg and "safetensors" in msg
    assert "weights_only=False" not in msg and "weights_only" not in msg


def test_cf_embeddings_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pt: tokenizer\.cf_embeddings: no such file.*leave tokenizer"):
        load_item_cf(tmp_path / "nope.pt", 4)


@pytest.mark.shared_data
def test_cf_embeddings_shipped_instruments_file(shared_data):
    path = shared_data / "amazon-instruments" / "Instruments-32d-sasrec.pt"
    assert torch.load(path, weights_only=True).requires_grad  # the row: the shipped tensor requires grad
    emb = load_item_cf(path, 9922)
    assert emb.shape == (9922, 32) and emb.dtype == np.float32 and np.isfinite(emb).all()


# --- config rows (the config layer): one line, exit 2, no traceback, before any work -------------
@pytest.mark.parametrize("text, parts", [
    ("data:\n  datset: synthetic\n", ["cfg.yaml", "data.datset", "valid keys here"]),
    ("data: [unclosed\n", ["cfg.yaml", "not valid YAML", "line"]),
    ("tokenizer:\n  alpha2: 0.1\n", ["cfg.yaml", "tokenizer.alpha2", "tokenizer.phase2_alpha"]),
])
def test_config_errors_are_one_line(tmp_path, capsys, text, parts):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    assert cli_main(["run", "--config", str(cfg), "--stages", "00"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    for p in parts:
        assert p in err


def test_relative_cf_embeddings_resolve_from_the_project_root(tmp_path, monkeypatch):
    from align3gr_kit.utils import project_root, resolve_path

    monkeypatch.chdir(project_root() / "notebooks")  # where the runner's kernels work
    assert resolve_path("configs/smoke.yaml") == project_root() / "configs" / "smoke.yaml"
    assert resolve_path("../configs/smoke.yaml", must_exist=True) == project_root() / "configs" / "smoke.yaml"
