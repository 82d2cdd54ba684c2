"""Runs you can trust (issue 40): finished stages verified on --resume, one writer per run, clean
interrupts, no leftovers. One table of bad run folders: how the test makes each, the command, its exit
code, the parts its message must hold, and that nothing else under runs/ changed.

The ``run`` commands execute a stand-in ``00_data`` notebook (a StageRun that writes the seed into
``x.txt``, optionally slowed by ``SLOW`` seconds), so a case costs one kernel start, not the data stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from align3gr_kit.cli import main as cli_main
from align3gr_kit.config import RunConfig
from align3gr_kit.stages import runner
from align3gr_kit.stages.contract import fingerprint, get_stage, is_current, lock_path, run_stage
from align3gr_kit.utils import project_root

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
