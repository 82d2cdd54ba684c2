"""Runs you can trust (issue 40): every row of the issue's table, made by the test. Two tables:

* bad run folders (finished stages verified on --resume, one writer per run, clean interrupts, no
  leftovers): how the test makes each, the command, its exit code, the parts its message must hold,
  and that nothing else under runs/ changed. The ``run`` commands execute a stand-in ``00_data``
  notebook (a StageRun that writes the seed into ``x.txt``, optionally slowed by ``SLOW`` seconds),
  so a case costs one kernel start, not the data stage;
* bad inputs (configs, flags, datasets): fp16 on a machine without a CUDA GPU; a bad ``--run-name``;
  a smoke cap lowering a ``--set`` value; an LC-Rec set with short users (with and without
  ``data.min_interactions``); LC-Rec item ids as digit strings (accepted) and as other strings
  (refused); a catalogue without categories (stage 02's NMI is ``null`` with a reason, never ``NaN``;
  history profiles name the part they lack). Each must give the expected exit code (or
  exception/warning) with a message that names where and how to fix it, changing nothing in the runs
  folder. Then the resumed SFT loss, over all steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from align3gr_kit.cli import main as cli_main
from align3gr_kit.config import DTYPE_NAMES, ModelConfig, RunConfig
from align3gr_kit.errors import DataError, DataWarning
from align3gr_kit.stages import runner
from align3gr_kit.stages.contract import fingerprint, get_stage, is_current, lock_path, run_stage
from align3gr_kit.utils import project_root, write_json

SMOKE = str(project_root() / "configs" / "smoke.yaml")


def _write_notebooks(folder: Path) -> Path:
    """A ``00_data`` notebook that only opens its stage, writes the seed and finishes."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell("config = None\nrun_name = None\nseed = None\nsmoke = None\nruns_dir = None\noverrides = {}",
                      metadata={"tags": ["parameters"]}),
        new_code_cell("import os, time\nfrom align3gr_kit.stages.notebook import start_stage\n"
                      "cfg, stage = start_stage('00_data', config, run_name=run_name, seed=seed, smoke=smoke, "
                      "runs_dir=runs_dir, overrides=overrides)\n"
                      "stage.path('x.txt').write_text(str(cfg.seed))\n"
                      "time.sleep(float(os.environ.get('SLOW', '0')))\nstage.finish({'seed': cfg.seed})"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "00_data.ipynb")
    return folder


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """Two finished runs ``a`` (seed 0) and ``b`` (seed 1) of stage 00 under ``tmp/runs``; the runner
    reads the stand-in notebook and writes its reports under ``tmp/reports``."""
    runs = tmp_path / "runs"
    nbs = _write_notebooks(tmp_path / "nbs")
    monkeypatch.setattr(runner, "notebooks_dir", lambda: nbs)
    real_render = runner.render_report
    monkeypatch.setattr(runner, "render_report",
                        lambda cfg, reports_dir=None, results=None: real_render(cfg, tmp_path / "reports", results))
    cfgs = {}
    for name, seed in (("a", 0), ("b", 1)):
        cfgs[name] = RunConfig.from_yaml(SMOKE, run_name=name, seed=seed, runs_dir=str(runs))
        run_stage(cfgs[name], "00_data")
    return {"runs": runs, "nbs": nbs, "cfg": cfgs, "tmp": tmp_path}


def _files(runs: Path, skip: str) -> dict[str, str]:
    """Every file under ``runs`` but run ``skip``'s own folder and the lock folder -> its sha256."""
    return {str(p.relative_to(runs)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(runs.rglob("*"))
            if p.is_file() and p.relative_to(runs).parts[0] not in (skip, ".locks")}


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:40])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _hold_lock(world: dict) -> subprocess.Popen:
    """Another live command on run ``a``: a process that takes its lock and sleeps."""
    code = textwrap.dedent(f"""
        import time
        from align3gr_kit.config import RunConfig
        from align3gr_kit.stages.contract import acquire_run
        acquire_run(RunConfig.from_yaml({SMOKE!r}, run_name="a", runs_dir={str(world['runs'])!r}))
        print("locked", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    world["cleanup"] = p.kill
    return p


def _dead_holder(world: dict) -> None:
    """A holder file left by a command that died (PID 2**22 + 17 is beyond Linux's pid_max default)."""
    path = lock_path(world["cfg"]["a"]).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": 2**22 + 17, "started": "2026-12-01T10:00:00+00:00", "command": "run"}))


def _stale_checkpoint(world: dict) -> None:
    cfg = world["cfg"]["a"]
    ck = cfg.run_dir / ".checkpoints" / f"00_data-{fingerprint(cfg, get_stage('00'))}" / "checkpoint-3"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"0" * 1000)


def _failing_tokenize(world: dict, monkeypatch) -> None:
    import align3gr_kit.stages.s01_tokenize as s01
    from align3gr_kit.errors import InputError

    def fail(cfg, stage, **kwargs):
        stage.path("half.npy").write_bytes(b"half-written")
        raise InputError("tokenizer: a bad input found half-way")

    monkeypatch.setattr(s01, "run", fail)


@dataclass
class Case:
    name: str
    make: Callable  # (world, monkeypatch) -> None: makes the bad input
    argv: list[str]  # after ``--config SMOKE --set runs_dir=<runs>``
    code: int
    parts: list[str]  # in stderr; ``{runs}`` and ``{pid}`` filled in
    after: Callable = lambda w: True  # (world) -> bool: the run ``a`` as it must be afterwards


CASES = [
    Case("manifest truncated: resume re-runs the stage with a warning naming the file",
         lambda w, mp: _truncate(w["cfg"]["a"].run_dir / "00_data" / "manifest.json"),
         ["run", "--run-name", "a", "--stages", "00", "--resume"], 0,
         ["warning: {runs}/a/00_data/manifest.json: unreadable manifest", "JSONDecodeError", "not finished"],
         lambda w: (w["cfg"]["a"].run_dir / "00_data" / "x.txt").read_text() == "0"),
    Case("manifest truncated in another run: this run's resume is unaffected",
         lambda w, mp: _truncate(w["cfg"]["a"].run_dir / "00_data" / "manifest.json"),
         ["run", "--run-name", "b", "--seed", "1", "--stages", "00", "--resume"], 0,
         ["[00_data] unchanged, skipped (--resume)"]),
    Case("an artifact deleted: resume re-runs the stage and names the file",
         lambda w, mp: (w["cfg"]["a"].run_dir / "00_data" / "dataset" / "items.parquet").unlink(),
         ["run", "--run-name", "a", "--stages", "00", "--resume"], 0,
         ["[00_data] re-running: 00_data/dataset/items.parquet is missing"],
         lambda w: (w["cfg"]["a"].run_dir / "00_data" / "x.txt").exists()),
    Case("an artifact changed, same size: its hash says so",
         lambda w, mp: _flip_byte(w["cfg"]["a"].run_dir / "00_data" / "dataset" / "items.parquet"),
         ["run", "--run-name", "a", "--stages", "00", "--resume"], 0,
         ["[00_data] re-running: 00_data/dataset/items.parquet changed since the stage finished"]),
    Case("--verify without --resume",
         lambda w, mp: None, ["run", "--run-name", "a", "--stages", "00", "--verify"], 2,
         ["error: run: --verify", "add --resume"],
         lambda w: is_current(w["cfg"]["a"], get_stage("00"), full=True)),
    Case("another live command holds the run",
         lambda w, mp: w.update(pid=_hold_lock(w).pid), ["run", "--run-name", "a", "--stages", "00"], 2,
         ["error: {runs}/a: run 'a' is in use by PID {pid}", "started 20", "another --run-name"],
         lambda w: is_current(w["cfg"]["a"], get_stage("00"))),
    Case("the lock's holder died: taken over with a message",
         lambda w, mp: _dead_holder(w), ["run", "--run-name", "a", "--stages", "00", "--resume"], 0,
         ["warning: {runs}/a: taking over the lock of PID 4194321 (started 2026-12-01T10:00:00+00:00)",
          "no longer running"],
         lambda w: not lock_path(w["cfg"]["a"]).with_suffix(".json").exists()),
    Case("checkpoints of a killed re-run of a finished stage: removed when resume skips it",
         lambda w, mp: _stale_checkpoint(w), ["run", "--run-name", "a", "--stages", "00", "--resume"], 0,
         ["[00_data] removed {runs}/a/.checkpoints/00_data-", "[00_data] unchanged, skipped"],
         lambda w: not (w["cfg"]["a"].run_dir / ".checkpoints").exists()),
    Case("a failed tokenize leaves no partial folder",
         _failing_tokenize, ["tokenize", "--run-name", "a"], 2,
         ["error: tokenizer: a bad input found half-way"],
         lambda w: not (w["cfg"]["a"].run_dir / ".01_tokenize.partial").exists()),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_run_folder(case, world, monkeypatch, capsys):
    runs = world["runs"]
    case.make(world, monkeypatch)
    target = "b" if "--run-name" in case.argv and case.argv[case.argv.index("--run-name") + 1] == "b" else "a"
    before = _files(runs, skip=target)
    try:
        code = cli_main([*case.argv, "--config", SMOKE, "--set", f"runs_dir={runs}"])
    finally:
        world.get("cleanup", lambda: None)()
    err = capsys.readouterr().err
    assert code == case.code, err
    for part in case.parts:
        assert part.format(runs=runs, pid=world.get("pid")) in err, err
    assert "Traceback" not in err
    assert _files(runs, skip=target) == before  # nothing else under runs/ changed
    assert case.after(world), err


def test_two_runs_on_one_name_the_second_is_refused_at_once_the_first_keeps_its_results(world, capsys):
    """The first ``run`` (seed 5, slowed in its stage) holds run ``a``; a second one with another seed
    is refused within a second, and the first finishes with its own seed's stage."""
    runs, tmp = world["runs"], world["tmp"]
    first = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(world["nbs"]), str(tmp / "reports"), "run", "--config", SMOKE,
         "--set", f"runs_dir={runs}", "--run-name", "a", "--seed", "5", "--stages", "00"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, SLOW="6"))
    holder = lock_path(world["cfg"]["a"]).with_suffix(".json")
    deadline = time.time() + 30
    while not holder.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert holder.exists(), first.communicate()
    t0 = time.time()
    assert cli_main(["run", "--config", SMOKE, "--set", f"runs_dir={runs}", "--run-name", "a", "--seed", "6",
                     "--stages", "00"]) == 2
    assert time.time() - t0 < 1.0
    err = capsys.readouterr().err
    assert f"in use by PID {first.pid}" in err and "Traceback" not in err
    out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert json.loads(out)["ok"] is True
    stage = world["cfg"]["a"].run_dir / "00_data"
    assert (stage / "x.txt").read_text() == "5" and json.loads((stage / "manifest.json").read_text())["seed"] == 5
    assert not any(p.name.endswith(".partial") for p in stage.parent.iterdir())


def test_truncated_manifest_reruns_its_run_and_leaves_another_run_alone(world, capsys):
    """Acceptance: run ``a``'s manifest truncated; ``--resume`` on ``a`` re-runs the stage with the
    warning; ``--resume`` on ``b`` skips its stage and changes nothing."""
    runs = world["runs"]
    _truncate(world["cfg"]["a"].run_dir / "00_data" / "manifest.json")
    b_before = _files(runs, skip="a")
    assert cli_main(["run", "--config", SMOKE, "--set", f"runs_dir={runs}", "--run-name", "b", "--seed", "1",
                     "--stages", "00", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["stages"][0]["status"] == "skipped (unchanged)" and "Traceback" not in err
    assert _files(runs, skip="a") == b_before
    assert cli_main(["run", "--config", SMOKE, "--set", f"runs_dir={runs}", "--run-name", "a",
                     "--stages", "00", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["stages"][0]["status"] == "ok"
    assert f"{runs}/a/00_data/manifest.json: unreadable manifest" in err and "Traceback" not in err
    assert is_current(world["cfg"]["a"], get_stage("00"))
    assert _files(runs, skip="a") == b_before


#: The command line in a subprocess, with the stand-in notebooks and the reports under the test's folder.
DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from align3gr_kit.stages import runner
    nbs, reports = Path(sys.argv[1]), Path(sys.argv[2])
    runner.notebooks_dir = lambda: nbs
    real = runner.render_report
    runner.render_report = lambda cfg, reports_dir=None, results=None: real(cfg, reports, results)
    from align3gr_kit.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_in_a_stage_prints_one_line_and_exits_130(sig, world):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM while a stage
    runs: exit 130, the one line, no traceback (nor the kernel's), the summary says so, no partial folder."""
    runs, tmp = world["runs"], world["tmp"]
    before = _files(runs, skip="a")
    p = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(world["nbs"]), str(tmp / "reports"), "run", "--config", SMOKE,
         "--set", f"runs_dir={runs}", "--run-name", "a", "--seed", "7", "--stages", "00"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, SLOW="60"),
        start_new_session=True)
    partial = world["cfg"]["a"].run_dir / ".00_data.partial"
    deadline = time.time() + 40
    while not (partial / "x.txt").exists() and time.time() < deadline:  # the stage's cell is running
        time.sleep(0.2)
    assert (partial / "x.txt").exists(), p.communicate()
    t0 = time.time()
    if sig == "SIGINT":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "ZMQError" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and lines[0].startswith("interrupted in stage 00_data after ")
    assert lines[0].endswith(" s; run again with --resume")
    assert json.loads(out)["stages"][0]["status"] == "interrupted"
    assert "INTERRUPTED: interrupted in stage 00_data" in (tmp / "reports" / "a" / "summary.md").read_text()
    assert not partial.exists() and not any(".tmp" in q.name for q in partial.parent.iterdir())
    assert json.loads((partial.parent / "00_data" / "manifest.json").read_text())["seed"] == 0  # the old stage
    assert _files(runs, skip="a") == before
    assert time.time() - t0 < 45


# ---------------------------------------------------------------------------- bad inputs
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
    from test_sft_train import TOKENS, _kill_at, _Killed, corpus, run_cfg, toy_sft

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


def test_a_notebook_setup_cell_run_again_after_a_failure_does_not_keep_the_run_locked(tmp_path):
    """In one kernel: a StageRun abandoned by a failed cell (never finished), then the setup cell again
    and the stage finished: the run's lock is free afterwards, for the next command."""
    from align3gr_kit.stages.contract import StageRun, acquire_run, release_run

    cfg = RunConfig.from_yaml(SMOKE, run_name="nb", runs_dir=str(tmp_path / "runs"))
    StageRun(cfg, "00_data")  # the failed attempt: its cell raised before stage.finish
    second = StageRun(cfg, "00_data")
    (second.dir / "x.txt").write_text("ok")
    second.finish({})
    holder = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from align3gr_kit.config import RunConfig
        from align3gr_kit.stages.contract import acquire_run, release_run
        cfg = RunConfig.from_yaml({SMOKE!r}, run_name="nb", runs_dir={str(tmp_path / "runs")!r})
        assert acquire_run(cfg)
        release_run(cfg)
        """)], capture_output=True, text=True, timeout=120, env={**os.environ, "ALIGN3GR_RUN_LOCKS": ""})
    assert holder.returncode == 0, holder.stderr[-2000:]
    assert acquire_run(cfg)  # and this process can take it again too
    release_run(cfg)
