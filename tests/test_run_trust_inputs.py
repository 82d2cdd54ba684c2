"""Issue 40, the input rows: each bad input is made by the test, run through the command (or the call)
a user would make, and must give the expected exit code (or exception/warning) with a message that
names where and how to fix it, changing nothing in the runs folder.

Rows: fp16 on a machine without a CUDA GPU; a bad ``--run-name``; a smoke cap lowering a ``--set``
value; an LC-Rec set with short users (with and without ``data.min_interactions``); LC-Rec item ids
as digit strings (accepted) and as other strings (refused); a catalogue without categories (stage
02's NMI is ``null`` with a reason, never ``NaN``; history profiles name the part they lack).
Then the resumed SFT loss, over all steps.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import torch

from align3gr_kit.cli import main as cli_main
from align3gr_kit.config import DTYPE_NAMES, ModelConfig, RunConfig
from align3gr_kit.errors import DataError, DataWarning
from align3gr_kit.utils import write_json


# ------------------------------------------------------------------ inputs the rows make
def _config(tmp: Path, **extra: Any) -> str:
    """A smoke config whose runs go to ``tmp/runs``, where a finished run of another name already lies."""
    doc = {"run_name": "mine", "smoke": True, "runs_dir": str(tmp / "runs"),
           "data": {"dataset": "synthetic", "synthetic_users": 40, "synthetic_items": 30},
           "model": {"dtype": "float32"}, **extra}
    path = tmp / "cfg.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    other = tmp / "runs" / "other" / "00_data"
    other.mkdir(parents=True)
    (other / "manifest.json").write_text('{"stage": "00_data"}\n')
    return str(path)


def _lcrec(tmp: Path, inter: dict, items: dict | None = None) -> str:
    """``tmp/lc/Toy.inter.json`` (+ ``Toy.item.json``); returns the folder."""
    folder = tmp / "lc"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Toy.inter.json").write_text(json.dumps(inter))
    if items is not None:
        (folder / "Toy.item.json").write_text(json.dumps(items))
    return str(folder)


def _five_core(n_users: int = 6, n_items: int = 6) -> dict:
    """Every user has every item (a 6-core), as integer ids."""
    return {str(u): [(u + k) % n_items for k in range(n_items)] for u in range(n_users)}


def _with_short_users() -> dict:
    """A 6-core set plus 4 users of fewer than 3 events (the Amazon Industrial rebuild's shape)."""
    return {**_five_core(), "6": [0, 1], "7": [2], "8": [3, 4], "9": [5]}


def _building(tmp: Path, overrides: dict) -> Callable[[], RunConfig]:
    """The call that builds the config of :func:`_config` (written now) with ``--set``-style overrides."""
    path = _config(tmp)
    return lambda: RunConfig.from_yaml(path, overrides=overrides, source="--set")


def _stats(tmp: Path, *more: str) -> list[str]:
    return ["data", "stats", "--dataset", "lcrec", "--data-path", str(tmp / "lc"), "--name", "Toy", *more]


@dataclass
class Row:
    """One row of the table: ``make(tmp)`` writes the bad input and returns the argv (a command) or a
    callable (a call); ``expect`` is the exit code, or the exception/warning class the call raises;
    ``parts`` must all be in the message; ``out`` checks the command's JSON output (exit 0 rows)."""

    name: str
    make: Callable[[Path], list[str] | Callable[[], Any]]
    expect: int | type
    parts: tuple[str, ...] = ()
    out: Callable[[dict], bool] | None = None
    needs: Callable[[], bool] = field(default=lambda: True)


ROWS = [
    Row("fp16 on a machine without a CUDA GPU",
        lambda t: ["run", "--config", _config(t), "--set", "model.dtype=fp16"], 2,
        ("--set: model.dtype = 'fp16'", "needs a CUDA GPU", "float32"),
        needs=lambda: not torch.cuda.is_available()),
    Row("a run name that is no folder name",
        lambda t: ["run", "--config", _config(t), "--run-name", "my run/1"], 2,
        ("--run-name: run_name = 'my run/1' is not a valid run name", "e.g. ml-100k-s1")),
    Row("a negative --seed",
        lambda t: ["run", "--config", _config(t), "--seed", "-1"], 2, ("--seed: seed = -1", ">= 0")),
    Row("a smoke cap lowers a --set value",
        lambda t: _building(t, {"sft.max_steps": 41}),
        DataWarning, ("--set: sft.max_steps = 41 is capped to 40 because smoke is on", "set smoke: false")),
    Row("a smoke cap replaces 'no limit'",
        lambda t: _building(t, {"dpo.max_prompts": 0}),
        DataWarning, ("dpo.max_prompts = 0 (no limit) is capped to 32",)),
    Row("lcrec users of fewer than 3 events",
        lambda t: (_lcrec(t, _with_short_users()), _stats(t))[1], 2,
        ("lc: user '6' has 2 interaction(s) (and 3 more users have fewer than 3)", "data.min_interactions: 5")),
    Row("lcrec short users, data stats --min-interactions as advised",
        lambda t: (_lcrec(t, _with_short_users()), _stats(t, "--min-interactions", "5"))[1], 0,
        out=lambda o: (o["users"], o["items"], o["interactions"]) == (6, 6, 36)),
    Row("lcrec short users, --min-interactions too high",
        lambda t: (_lcrec(t, _with_short_users()), _stats(t, "--min-interactions", "7"))[1], 2,
        ("nothing is left after a 7-core filter", "lower data.min_interactions")),
    Row("lcrec item ids as digit strings (the same ids)",
        lambda t: (_lcrec(t, {u: [str(i) for i in s] for u, s in _five_core().items()}), _stats(t))[1], 0,
        out=lambda o: (o["users"], o["items"], o["interactions"]) == (6, 6, 36)),
    Row("lcrec item ids that are not indices",
        lambda t: (_lcrec(t, {"0": [0, 1, "B00X"]}), _stats(t))[1], 2,
        ("Toy.inter.json: user '0'", "integer item indices", "'B00X' (a string) at position 2",
         'written 17 or "17"')),
]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_row(row: Row, tmp_path, capsys):
    if not row.needs():
        pytest.skip(f"{row.name}: not this machine's case")
    action = row.make(tmp_path)
    runs = tmp_path / "runs"
    before = _tree(runs)
    if isinstance(action, list):
        code = cli_main(action)
        out, err = capsys.readouterr()
        assert code == row.expect, err
        message = err
        if row.out is not None:
            assert row.out(json.loads(out)), out
        if code:
            assert "Traceback" not in err and err.startswith("error: ")
    elif issubclass(row.expect, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
        found = [w for w in caught if issubclass(w.category, row.expect)]
        assert len(found) == 1, [str(w.message) for w in caught]
        message = str(found[0].message)
    else:
        with pytest.raises(row.expect) as e:
            action()
        message = str(e.value)
    for part in row.parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert _tree(runs) == before  # nothing in runs/ changed: not the other run, no folder for this one


def test_dtype_choices_are_the_names_precision_handles():
    """One list: every ``model.dtype`` the validator accepts is one ``precision.canonical`` maps."""
    from align3gr_kit.model import precision

    choices = next(f for f in ModelConfig.__dataclass_fields__.values() if f.name == "dtype").metadata["choices"]
    assert set(choices) == set(DTYPE_NAMES) == {"auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"}
    assert {precision.canonical(n) for n in choices} == {"auto", "float32", "bfloat16", "float16"}
    with pytest.raises(ValueError, match="unknown value 'fp8'"):
        precision.canonical("fp8")


def test_lcrec_digit_string_ids_give_the_same_dataset(tmp_path):
    """``["3", "17"]`` and ``[3, 17]`` are one dataset (ids, sequences, item text joined by id)."""
    from align3gr_kit.data.lcrec import load_lcrec

    seqs = {str(u): [3 * ((u + k) % 5) for k in range(5)] for u in range(5)}
    items = {str(3 * i): {"title": f"item {3 * i}", "categories": ["Root", f"C{i % 2}"]} for i in range(5)}
    a = load_lcrec(_lcrec(tmp_path / "a", seqs, items), "Toy")
    b = load_lcrec(_lcrec(tmp_path / "b", {u: [str(i) for i in s] for u, s in seqs.items()}, items), "Toy")
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert {k: v.tolist() for k, v in a.sequences().items()} == {k: v.tolist() for k, v in b.sequences().items()}


def test_min_interactions_runs_before_the_per_user_check_in_every_loader(tmp_path):
    """ml-100k-shaped files with one user of 2 ratings: refused without the filter, loaded with it."""
    from align3gr_kit.data.movielens import load_ml100k

    folder = tmp_path / "ml"
    folder.mkdir()
    rows = [(u, i) for u in range(1, 5) for i in range(1, 5)] + [(5, 1), (5, 2)]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t3\t{880000000 + n}\n" for n, (u, i) in enumerate(rows)))
    (folder / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||url|" + "|".join(["0"] * 8 + ["1"]
                                           + ["0"] * 10) + "\n" for i in range(1, 5)))
    (folder / "u.user").write_text("".join(f"{u}|30|M|writer|12345\n" for u in range(1, 6)))
    with pytest.raises(DataError, match="user '5' has 2 interaction"):
        load_ml100k(folder)
    ds = load_ml100k(folder, min_interactions=3)
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (4, 4, 16)


# ------------------------------------------------------------------ no categories: null with a reason
def _strict_load(path: Path) -> Any:
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_json_is_strict_json(tmp_path):
    obj = {"nan": float("nan"), "inf": np.float32("inf"), "arr": np.array([1.0, np.nan]), "ok": np.float64(0.5),
           "nested": [{"x": -math.inf}], "n": np.int64(3)}
    got = _strict_load(write_json(tmp_path / "a.json", obj))
    assert got == {"nan": None, "inf": None, "arr": [1.0, None], "ok": 0.5, "nested": [{"x": None}], "n": 3}


class _Items:
    def __init__(self, codes):
        self.codes = codes


class _Stage:
    """What stage 02 reads, for a catalogue whose items carry no category."""

    def __init__(self, n: int):
        from align3gr_kit.data.schema import make_items

        items = make_items([{"raw_id": str(i), "title": f"t{i}"} for i in range(n)], "Toy.item.json")
        self.data = type("D", (), {"dataset": type("DS", (), {"items": items})()})()
        self.art = type("A", (), {"items": _Items(np.arange(n * 3).reshape(n, 3) % 4), "item_raw": None,
                                  "user_raw": None, "summary": {"item_codebook_size": 4}})()

    def input(self, name):
        return self.data if name == "00_data" else self.art


def test_stage02_nmi_without_categories_is_null_with_a_reason(tmp_path, monkeypatch):
    from align3gr_kit.stages import s02_codebooks

    # the figures and the collision table are other tests' business: this row is about the NMI
    monkeypatch.setattr(s02_codebooks, "save_figure", lambda *a, **k: None)
    monkeypatch.setattr(s02_codebooks.viz, "usage_figure", lambda *a, **k: None)
    monkeypatch.setattr(s02_codebooks.viz, "collision_table",
                        lambda art: pd.DataFrame({"side": ["item"], "collisions after": [0]}))
    metrics = s02_codebooks.run(RunConfig(), _Stage(8))
    reason = metrics["item_code_category_nmi_reason"]
    assert "no item has a category label" in reason and "all 8 items" in reason
    written = _strict_load(write_json(tmp_path / "manifest.json", {"metrics": metrics}))["metrics"]
    assert written["item_code_category_nmi"] is None and written["item_code_category_nmi_reason"] == reason


def test_history_profiles_say_which_item_fields_they_use(tmp_path):
    """Items with titles and brands but no categories: the profiles name no category, and say so."""
    from align3gr_kit.data import leave_one_out
    from align3gr_kit.data.artifacts import DataArtifacts
    from align3gr_kit.data.lcrec import load_lcrec
    from align3gr_kit.data.profiles import apply_user_profiles

    items = {str(i): {"title": f"Valve {i}", "brand": f"B{i % 2}"} for i in range(6)}
    ds = load_lcrec(_lcrec(tmp_path, _five_core(), items), "Toy")
    split = leave_one_out(ds, 20)
    with pytest.warns(DataWarning, match=r"from_history builds profiles from brands and titles only; no item has an "
                                         r"informative category .*of 6 items.*so no profile names categories"):
        out = apply_user_profiles(ds, split, "from_history")
    assert out.extra["profile_fields"] == {"categories": 0, "brands": 6, "titles": 6}
    assert all(p.startswith("Brands: ") and "Interested in" not in p for p in out.users.profile)
    assert DataArtifacts(out, split).metrics()["profile_fields"] == {"categories": 0, "brands": 6, "titles": 6}


# ------------------------------------------------------------------ the resumed loss covers every step
def test_mean_loss_over_steps_by_hand():
    # logged means over steps 1-2 (2.0) and 3 (1.0), resumed from 3; the call's 3 steps average 0.5
    history = [{"step": 2, "loss": 2.0}, {"step": 3, "loss": 1.0}, {"step": 4, "loss": 0.4}, {"step": 6, "loss": 0.55}]
    from align3gr_kit.train.sft import mean_loss_over_steps

    assert mean_loss_over_steps(history, 3, 0.5, 6) == (pytest.approx(((2 * 2.0 + 1.0) + 3 * 0.5) / 6), 6)
    # a checkpoint at 3 written without a log there: step 3 is unknown, and the count says so
    assert mean_loss_over_steps(history[:1] + history[2:], 3, 0.5, 6) == (pytest.approx((2 * 2.0 + 3 * 0.5) / 5), 5)
    assert mean_loss_over_steps(history, 0, 0.7, 6) == (0.7, 6)


def test_resumed_sft_loss_is_over_all_steps(tmp_path):
    """Killed at step 4 (checkpoint at 3, logs every 2 steps), resumed: the same train_loss as a
    straight run, over all 6 steps (Trainer's own training_loss covers steps 4-6 only)."""
    from test_sft_train import _kill_at, _Killed, corpus, run_cfg, toy_sft, TOKENS

    from align3gr_kit.model import build_backbone
    from align3gr_kit.train.sft import train_sft

    cfg = run_cfg(tmp_path, max_steps=6, save_steps=3, logging_steps=2, lr=1e-2)
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    straight = train_sft(cfg, model, tok, toy_sft(), tmp_path / "a", checkpoint_dir=tmp_path / "ck_a")
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    with pytest.raises(_Killed):
        train_sft(cfg, model, tok, toy_sft(), tmp_path / "b", checkpoint_dir=tmp_path / "ck_b", callbacks=[_kill_at(4)])
    model, tok = build_backbone(cfg.model, corpus(), TOKENS, cfg.seed)
    resumed = train_sft(cfg, model, tok, toy_sft(), tmp_path / "b", checkpoint_dir=tmp_path / "ck_b")
    assert resumed["resumed_from_step"] == 3 and resumed["train_loss_steps"] == straight["train_loss_steps"] == 6
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-5)
    call_only = resumed["trainer"].state.log_history[-1]["train_loss"]  # the Trainer's: steps 4-6
    assert abs(call_only - straight["train_loss"]) > 1e-3
