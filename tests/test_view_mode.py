"""View mode and the locks of notebooks (issue 36): a finished stage is viewed without writing anything
under the run; two notebooks of one run (04 and 05) are open together and neither loses the other's work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from align3gr_kit.stages import s04_sft, s05_sp_dpo
from align3gr_kit.stages.contract import (
    MANIFEST,
    PARTIAL,
    STAGES,
    RunInUse,
    StageNotFinished,
    StageRun,
    StageView,
    acquire_run,
    read_manifest,
    release_run,
)
from align3gr_kit.stages.notebook import save_figure, start_stage
from align3gr_kit.utils import project_root

SMOKE = str(project_root() / "configs" / "smoke.yaml")
FINISHED = [s.name for s in STAGES if s.name != "07_report"]  # what the smoke_run fixture makes


def _snapshot(root) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) -> (mtime_ns, size)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(p := os.path.join(dirpath, name))
            out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture()
def run_copy(smoke_run, tmp_path):
    """A writable copy of the smoke run, in its own runs folder; returns its RunConfig."""
    shutil.copytree(smoke_run.run_dir, tmp_path / smoke_run.run_name, symlinks=True)
    return smoke_run.override({"runs_dir": str(tmp_path)})


def _open(cfg, stage, mode, **kw):
    return start_stage(stage, SMOKE, mode=mode, run_name=cfg.run_name, runs_dir=str(cfg.runs_dir), **kw)


def test_a_view_of_every_finished_stage_writes_nothing_under_the_runs_folder(smoke_run, capsys):
    runs = smoke_run.run_dir.parent
    before = _snapshot(runs)
    for name in FINISHED:
        cfg, stage = _open(smoke_run, name, "view")
        assert isinstance(stage, StageView) and stage.viewing and stage.current
        assert f"VIEWS the finished stage {name}" in capsys.readouterr().out
        # execute calls nothing (a function that would fail) and returns the recorded metrics
        assert stage.execute(lambda *a, **k: pytest.fail("a view must not run the stage")) == \
            read_manifest(smoke_run, name)["metrics"]
        if name != "02_codebooks":  # 02 only draws: no artifacts to load
            assert stage.output is not None
        scratch = stage.path("figures/x.html")
        assert runs not in scratch.parents and stage.dir == stage.final_dir == smoke_run.run_dir / name
        fig = object()
        assert save_figure(fig, stage, "x") is fig
        assert stage.finish({"ignored": 1}) == stage.final_dir
    assert _snapshot(runs) == before, "a view changed, created or removed something under the runs folder"


def test_auto_views_a_current_stage_and_runs_a_changed_one(run_copy):
    _, stage = _open(run_copy, "04_sft", "auto")
    assert isinstance(stage, StageView)
    _, stage = _open(run_copy, "04_sft", "auto", overrides={"sft.max_steps": 3})
    assert isinstance(stage, StageRun) and not stage.viewing and stage.dir.is_dir()
    stage.abandon()
    assert not stage.dir.exists() and (run_copy.run_dir / "04_sft" / MANIFEST).exists()


def test_a_view_of_a_stage_not_finished_names_the_command(smoke_run):
    with pytest.raises(StageNotFinished) as err:
        _open(smoke_run, "07_report", "view")
    msg = str(err.value)
    assert "\n" not in msg and "stage 07_report" in msg and "has not finished" in msg
    assert "python -m align3gr_kit run --config configs/smoke.yaml --stages 00,01,03,04,05,06,07 --resume" in msg
    with pytest.raises(ValueError, match="mode = 'watch'"):
        _open(smoke_run, "04_sft", "watch")


def test_04_and_05_open_together_then_05_finishes_and_04_loses_nothing(run_copy):
    """The acceptance test of issue 36: both setup cells run, 05 trains and finishes while 04 works."""
    run_dir = run_copy.run_dir
    _, s04 = _open(run_copy, "04_sft", "run")
    work = s04.path("model/half-written.bin")
    work.write_bytes(b"04 at work")
    _, s05 = _open(run_copy, "05_sp_dpo", "run")
    assert (run_dir / f".04_sft{PARTIAL}").is_dir(), "opening 05 removed 04's work in progress"
    s05.finish(s05.execute(s05_sp_dpo.run, progress=False))
    assert read_manifest(run_copy, "05_sp_dpo")["finished_at"] >= read_manifest(run_copy, "04_sft")["finished_at"]
    assert work.read_bytes() == b"04 at work", "finishing 05 touched 04's work in progress"
    old_manifest = read_manifest(run_copy, "04_sft")
    work.unlink()
    s04.finish(s04.execute(s04_sft.run, progress=False))
    new_manifest = read_manifest(run_copy, "04_sft")
    assert new_manifest["finished_at"] >= old_manifest["finished_at"] and new_manifest["metrics"]
    assert not list(run_dir.glob(f".*{PARTIAL}"))
    # both finished stages stand: a view opens each (their locks are free again)
    for name in ("04_sft", "05_sp_dpo"):
        assert isinstance(_open(run_copy, name, "auto")[1], StageView)


HOLD = textwrap.dedent("""
    import sys, time
    from align3gr_kit.stages.notebook import start_stage
    start_stage("04_sft", sys.argv[1], mode="run", run_name=sys.argv[2], runs_dir=sys.argv[3])
    print("ready", flush=True)
    time.sleep(120)
""")


def test_a_notebook_in_another_process_keeps_its_stage_and_excludes_commands(run_copy):
    """A stage open in run mode in one kernel: another kernel may open another stage, not the same one;
    a command (which holds the run lock) is refused naming the notebook's stage."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, SMOKE, run_copy.run_name, str(run_copy.runs_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # start_stage's line, then ours
        assert "RUNS stage 04_sft" in lines[0] and lines[1].strip() == "ready", (lines, proc.stderr.read())
        with pytest.raises(RunInUse, match="stage 04_sft of run .* is open in run mode by PID"):
            _open(run_copy, "04_sft", "run")
        with pytest.raises(RunInUse, match="stage 04_sft of run .* is open in run mode in a notebook"):
            acquire_run(run_copy)
        _, s05 = _open(run_copy, "05_sp_dpo", "run")  # another stage of the same run: allowed
        s05.abandon()
        assert (run_copy.run_dir / f".04_sft{PARTIAL}").is_dir()
    finally:
        proc.kill()
        proc.wait()
    assert acquire_run(run_copy)  # the kernel ended: the system released its stage lock
    release_run(run_copy)


def test_a_command_excludes_notebooks_of_its_run(run_copy):
    assert acquire_run(run_copy)
    try:
        # a kernel started by hand, not by this command (papermill's kernels inherit the lock's variable)
        env = {k: v for k, v in os.environ.items() if k != "ALIGN3GR_RUN_LOCKS"}
        proc = subprocess.run([sys.executable, "-c", HOLD, SMOKE, run_copy.run_name, str(run_copy.runs_dir)],
                              capture_output=True, text=True, timeout=120, env=env)
    finally:
        release_run(run_copy)
    assert proc.returncode != 0 and "RunInUse" in proc.stderr and "is in use by PID" in proc.stderr


def test_run_mode_view_renders_reports_and_changes_nothing_under_the_run(smoke_run, tmp_path):
    """``run --mode view``: the notebooks execute in view mode, their HTML lands in the reports folder,
    nothing under the runs folder changes; a stage not finished stops it first, naming the command."""
    from align3gr_kit.stages.runner import run_pipeline

    runs = smoke_run.run_dir.parent
    before = _snapshot(runs)
    result = run_pipeline(smoke_run, SMOKE, stages=["00", "03"], reports_dir=tmp_path, mode="view")
    assert result["ok"] and [r["status"] for r in result["stages"]] == ["viewed", "viewed"], result
    report = tmp_path / smoke_run.run_name
    html = (report / "03_sft_prompts.html").read_text()
    assert "VIEWS the finished stage 03_sft_prompts" in html and "RUNS stage" not in html
    assert (report / "00_data.html").exists() and (report / "summary.md").exists()
    assert _snapshot(runs) == before
    with pytest.raises(StageNotFinished, match="stage 07_report .* make it with: python -m align3gr_kit run"):
        run_pipeline(smoke_run, SMOKE, stages=["00", "07"], reports_dir=tmp_path, mode="view")
