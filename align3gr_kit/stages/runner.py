"""Run the pipeline's notebooks headlessly through papermill and render ``reports/<run_name>/``.

Each stage notebook runs with the run's parameters injected; the notebook's :class:`StageRun`
writes the stage into a temporary folder and renames it into place when it finishes
(:mod:`align3gr_kit.stages.contract`); the executed notebook is then saved beside the artifacts as
``runs/<run_name>/<stage>/<stage>.ipynb``. A failing cell stops the run: its notebook is kept as
``runs/<run_name>/<stage>.failed.ipynb`` (error cell marked), the stage's partial folder is removed,
the error is printed (plain text), and the report says which stage failed; earlier stages stay
intact. Ctrl-C or SIGTERM stops the same way, with one line saying where (:class:`Interrupted`).
``resume`` skips a stage that is current (:func:`check_stage`: its artifacts checked too), or copies
an identical stage finished by another run; a stage it has to run continues from its checkpoints
when a killed run left some (SFT, ``sft.save_steps``); without ``resume`` those are deleted first.

``mode="view"`` executes the notebooks of a finished run in view mode instead (each draws its stage
from the artifacts, trains nothing; :class:`~align3gr_kit.stages.contract.StageView`): the executed
notebooks go to a temporary folder and are rendered into ``reports/<run_name>/``; nothing under the
run changes and no lock is taken. A stage that has not finished stops it before any notebook runs,
naming the command that makes it.

Reports read offline: equations with a MathJax shipped by ``jupyter-server-mathjax`` (copied beside
the HTML, :func:`copy_mathjax`), progress bars frozen as text dropped (:func:`drop_progress_bars`),
the injected parameters relative to the project.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import nbformat

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import (
    MANIFEST,
    STAGES,
    Interrupted,
    Stage,
    StageNotFinished,
    check_stage,
    clean_leftovers,
    drop_checkpoints,
    drop_stale_checkpoints,
    find_identical_stage,
    get_stage,
    load_manifest,
    make_command,
    reuse_stage,
    run_lock,
)
from align3gr_kit.utils import atomic_path, project_root, resolve_path, write_json


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def available_stages() -> list[Stage]:
    """Stages whose notebook exists, in pipeline order."""
    return [s for s in STAGES if (notebooks_dir() / s.notebook).exists()]


def run_pipeline(cfg: RunConfig, config_path: str, stages: list[str] | None = None, resume: bool = False,
                 overrides: dict[str, Any] | None = None, kernel_name: str = "python3",
                 render: bool = True, reports_dir: Path | None = None, verify: bool = False,
                 mode: str = "run") -> dict[str, Any]:
    """Execute the selected stages in order; returns ``{"ok", "run_dir", "stages": [...], "report"}``.

    ``mode="run"``: the notebooks (re)make their stages. Holds the run's lock throughout
    (:func:`~align3gr_kit.stages.contract.run_lock`: raises :class:`~align3gr_kit.stages.contract.RunInUse`
    at once when another command holds it, or a notebook has a stage of the run open in run mode) and
    first removes what stopped commands left in the run, naming each path. With ``resume``, a finished
    stage whose artifacts fail their check (``verify``: hash every file) is re-run with one line saying
    which file. Ctrl-C / SIGTERM in a stage removes its partial folder, writes the report, and raises
    :class:`~align3gr_kit.stages.contract.Interrupted` (``.result``: the return value).

    ``mode="view"``: :func:`view_pipeline` (``resume`` and ``verify`` do not apply).
    """
    if mode == "view":
        return view_pipeline(cfg, config_path, stages, overrides, kernel_name, render, reports_dir)
    if mode != "run":
        raise ValueError(f"run: --mode {mode!r}; use run or view")
    with run_lock(cfg):
        return _run_pipeline(cfg, config_path, stages, resume, overrides, kernel_name, render, reports_dir, verify)


def notebook_parameters(cfg: RunConfig, config_path: str, overrides: dict[str, Any] | None, mode: str) -> dict[str, Any]:
    """The parameters papermill injects into every notebook of a run: paths relative to the project
    (they resolve from ``notebooks/`` as from the root: :func:`~align3gr_kit.utils.resolve_path`), so the
    reports show no machine's folders; a path outside the project stays absolute."""
    return {
        "config": project_relative(resolve_path(config_path, must_exist=True)),
        "mode": mode,
        "run_name": cfg.run_name,
        "seed": cfg.seed,
        "smoke": cfg.smoke,
        "runs_dir": project_relative(resolve_path(cfg.runs_dir)),
        "overrides": {k: v for k, v in (overrides or {}).items() if k not in ("run_name", "seed")},
    }


def project_relative(path: Path) -> str:
    """``path`` relative to the project root when it lies inside it, else absolute."""
    path, root = Path(path).resolve(), project_root().resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _chosen(stages: list[str] | None) -> list[Stage]:
    chosen = [get_stage(s) for s in stages] if stages else available_stages()
    chosen = sorted(set(chosen), key=STAGES.index)
    missing = [s.notebook for s in chosen if not (notebooks_dir() / s.notebook).exists()]
    if missing:
        raise FileNotFoundError(f"notebooks/{missing[0]}: notebook missing for the requested stage")
    return chosen


def _execute(stage: Stage, out: Path, params: dict[str, Any], kernel_name: str, log_path: Path) -> None:
    """papermill: ``notebooks/<stage>.ipynb`` with ``params`` into ``out``; the kernel's own stderr in ``log_path``."""
    import papermill as pm

    with open(log_path, "wb") as log:
        pm.execute_notebook(
            str(notebooks_dir() / stage.notebook), str(out), parameters=params,
            kernel_name=kernel_name, cwd=str(notebooks_dir()), progress_bar=False,
            log_output=False, request_save_on_cell_execute=False,
            kernel_manager_class=quiet_kernel_manager(log), shutdown_kernel="immediate",
        )


def view_pipeline(cfg: RunConfig, config_path: str, stages: list[str] | None = None,
                  overrides: dict[str, Any] | None = None, kernel_name: str = "python3", render: bool = True,
                  reports_dir: Path | None = None) -> dict[str, Any]:
    """Execute the selected notebooks in view mode on ``cfg``'s finished run and render their reports.

    Nothing under the run is written and no lock is taken: the executed notebooks live in a temporary
    folder until :func:`render_report` has turned them into ``reports/<run_name>/*.html``. Returns
    ``{"ok", "run_dir", "stages", "report"}`` as :func:`run_pipeline`; a failing cell stops it, its
    notebook kept as ``reports/<run_name>/<stage>.failed.ipynb``.

    Raises:
        StageNotFinished: before any notebook runs, when a selected stage has not finished (or its files
            changed), naming the stage and the command that makes it.
    """
    import papermill as pm

    chosen = _chosen(stages)
    shown = project_relative(resolve_path(config_path, must_exist=True))
    for stage in chosen:
        state, problem = check_stage(cfg, stage)
        if state in ("missing", "damaged"):
            why = "has not finished" if state == "missing" else f"changed since it finished ({problem})"
            raise StageNotFinished(f"{cfg.run_dir / stage.name}: stage {stage.name} of run {cfg.run_name!r} {why}, so "
                                   f"there is nothing to view; make it with: {make_command(stage.name, shown)}")
    params = notebook_parameters(cfg, config_path, overrides, "view")
    results: list[dict[str, Any]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix=f"align3gr-view-{cfg.run_name}-") as tmp, _report_environment():
        executed: dict[str, Path] = {}
        for stage in chosen:
            print(f"[{stage.name}] viewing with notebooks/{stage.notebook}", file=sys.stderr)
            t0, out = time.time(), Path(tmp) / stage.notebook
            try:
                _execute(stage, out, params, kernel_name, Path(tmp) / f"{stage.name}.kernel.log")
            except pm.PapermillExecutionError as e:
                failed = Path(reports_dir or project_root() / "reports") / cfg.run_name / stage.notebook.replace(
                    ".ipynb", ".failed.ipynb")
                failed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out, failed)
                ok = False
                error = _plain(f"{e.ename}: {e.evalue}")
                results.append({"stage": stage.name, "status": "failed", "cell": e.exec_count, "error": error,
                                "notebook": str(failed)})
                print(f"[{stage.name}] FAILED in cell {e.exec_count}: {error}\n  see {failed}", file=sys.stderr)
                break
            executed[stage.name] = out
            results.append({"stage": stage.name, "status": "viewed", "seconds": round(time.time() - t0, 1)})
        report = render_report(cfg, reports_dir, results, notebooks=executed) if render else None
    return {"ok": ok, "run_dir": str(cfg.run_dir), "stages": results, "report": str(report) if report else None}


@contextlib.contextmanager
def _report_environment() -> Iterator[None]:
    """While notebooks run for a report: figures embedded with plotly.js (interactive and offline in
    the HTML) and a persistent numba cache; the previous renderer comes back afterwards."""
    before = os.environ.get("PLOTLY_RENDERER")
    os.environ["PLOTLY_RENDERER"] = "notebook"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "align3gr-numba"))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PLOTLY_RENDERER", None)
        else:
            os.environ["PLOTLY_RENDERER"] = before


def _run_pipeline(cfg: RunConfig, config_path: str, stages: list[str] | None, resume: bool,
                  overrides: dict[str, Any] | None, kernel_name: str, render: bool, reports_dir: Path | None,
                  verify: bool) -> dict[str, Any]:
    import papermill as pm

    chosen = _chosen(stages)
    params = notebook_parameters(cfg, config_path, overrides, "run")
    results: list[dict[str, Any]] = []
    ok = True
    interrupted: Interrupted | None = None
    clean_leftovers(cfg.run_dir)
    with _report_environment():
        try:
            for stage in chosen:
                folder = cfg.run_dir / stage.name
                state, problem = check_stage(cfg, stage, full=verify) if resume else ("", "")
                if state == "current":
                    drop_stale_checkpoints(cfg, stage)
                    results.append({"stage": stage.name, "status": "skipped (unchanged)"})
                    print(f"[{stage.name}] unchanged, skipped (--resume)", file=sys.stderr)
                    continue
                if problem:
                    print(f"[{stage.name}] re-running: {problem}", file=sys.stderr)
                if resume and (source := find_identical_stage(cfg, stage)) is not None:
                    reuse_stage(source, folder)
                    results.append({"stage": stage.name, "status": f"reused from {source.parent.name}"})
                    print(f"[{stage.name}] identical to {source}, copied (--resume)", file=sys.stderr)
                    continue
                if not resume:  # a plain run starts every stage afresh; --resume continues a killed SFT
                    drop_checkpoints(cfg, stage)
                failed_nb = cfg.run_dir / stage.notebook.replace(".ipynb", ".failed.ipynb")
                print(f"[{stage.name}] running notebooks/{stage.notebook}", file=sys.stderr)
                t0 = time.time()
                cfg.run_dir.mkdir(parents=True, exist_ok=True)
                tmp = cfg.run_dir / f".{stage.name}.tmp.ipynb"
                kernel_log = cfg.run_dir / f".{stage.name}.kernel.tmp.log"
                try:
                    _execute(stage, tmp, params, kernel_name, kernel_log)
                except KeyboardInterrupt:  # papermill has shut the kernel down by now (its setup_kernel's finally)
                    clean_leftovers(cfg.run_dir, report=False)
                    ok = False
                    interrupted = Interrupted(stage.name, time.time() - t0)
                    results.append({"stage": stage.name, "status": "interrupted", "seconds": round(interrupted.seconds, 1),
                                    "error": str(interrupted)})
                    raise _StageFailed from None
                except pm.PapermillExecutionError as e:
                    shutil.copyfile(tmp, failed_nb)
                    clean_leftovers(cfg.run_dir, report=False)
                    ok = False
                    error = _plain(f"{e.ename}: {e.evalue}")
                    results.append({"stage": stage.name, "status": "failed", "cell": e.exec_count,
                                    "error": error, "notebook": str(failed_nb)})
                    print(f"[{stage.name}] FAILED in cell {e.exec_count}: {error}\n  see {failed_nb}\n"
                          + _plain("".join(e.traceback[-3:])), file=sys.stderr)
                    raise _StageFailed from e
                except Exception:  # the kernel died (DeadKernelError) or would not start: its own last words
                    tail = kernel_log.read_text(errors="replace").strip().splitlines()[-15:] if kernel_log.exists() else []
                    if tail:
                        print(f"[{stage.name}] the kernel's last output:\n  " + "\n  ".join(tail), file=sys.stderr)
                    clean_leftovers(cfg.run_dir, report=False)
                    raise
                kernel_log.unlink(missing_ok=True)
                manifest = load_manifest(folder / MANIFEST)
                if manifest is None:
                    raise RuntimeError(f"notebooks/{stage.notebook} ran but did not finish its stage "
                                       "(its closing cell must call stage.finish)")
                os.replace(tmp, folder / stage.notebook)
                if failed_nb.exists():
                    failed_nb.unlink()
                results.append({"stage": stage.name, "status": "ok", "seconds": round(time.time() - t0, 1),
                                "metrics": manifest.get("metrics", {})}
                               | ({"rerun_because": problem} if problem else {}))
        except _StageFailed:
            pass
    report = None
    if render:
        report = render_report(cfg, reports_dir, results)
        # the run's results as a small file in its (ignored) report folder; `report pipeline` writes
        # the copy under reports/tables/ that BENCHMARKS.md shows, so a demo never edits a tracked file
        from align3gr_kit.report.pipeline_file import write_pipeline_document

        write_pipeline_document(cfg, config_path, report)
    result = {"ok": ok, "run_dir": str(cfg.run_dir), "stages": results, "report": str(report) if report else None}
    if interrupted is not None:
        interrupted.result = result | {"interrupted": str(interrupted)}
        raise interrupted
    return result


# One frame of a tqdm bar: ``n/total [elapsed<left`` or, without a total, ``123it [elapsed``.
_PROGRESS = re.compile(r"(\d+/\S+|\d+(\.\d+)?\s?[a-zA-Z ]*)\s\[\d+:\d\d")


#: The MIME type of a Jupyter widget's output (tqdm draws one per bar in a kernel with ipywidgets).
WIDGET = "application/vnd.jupyter.widget-view+json"


def drop_progress_bars(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove progress bars from ``nb``'s saved outputs, in place; returns ``nb``: tqdm's widget outputs, and
    the frames in stderr streams.

    tqdm redraws a bar with carriage returns; a saved notebook keeps every frame as text, which a report
    shows as a wall of bars. Each stderr text is cut at ``\\r`` and ``\\n``; pieces that are tqdm frames go,
    other lines (a warning) stay; a stream left empty is removed."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET in data and _PROGRESS.search(_ANSI.sub("", str(data.get("text/plain", "")))):
                continue  # a tqdm widget: live in Lab, saved it is only its text at 0%
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                pieces = [p for p in re.split(r"[\r\n]", out["text"]) if p.strip()]
                rest = [p for p in pieces if not _PROGRESS.search(_ANSI.sub("", p))]
                if len(rest) < len(pieces):
                    if not rest:
                        continue
                    out["text"] = "\n".join(rest) + "\n"
            kept.append(out)
        cell["outputs"] = kept
    return nb


def quiet_kernel_manager(log: Any = None) -> type:
    """A kernel manager class for headless runs (papermill, ``notebooks refresh``): its kernels talk over
    IPC sockets, not TCP (ipykernel logs ``Kernel is running over TCP without encryption`` for every TCP
    kernel; IPC needs no encryption, its sockets are files of this user in Jupyter's runtime folder),
    and with ``log`` (an open file) they write their own stderr there, not to the terminal: the ZMQ
    tracebacks of a kernel stopped mid-cell by an interrupt. What a cell prints still reaches the
    notebook (through the kernel's messages)."""
    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    class QuietKernelManager(AsyncKernelManager):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.transport = "ipc"
            # an absolute socket prefix: jupyter_client's default ("kernel-ipc") is relative, and the
            # kernel (started in notebooks/) and this client (elsewhere) would look in different folders
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            self.ip = str(runtime / f"align3gr-{os.getpid()}-{uuid.uuid4().hex[:8]}-ipc")

        async def start_kernel(self, **kw: Any) -> None:
            if log is not None:
                kw.setdefault("stderr", log)
            return await super().start_kernel(**kw)

    return QuietKernelManager


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain(text: str) -> str:
    """``text`` without ANSI colour codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class _StageFailed(Exception):
    pass


#: Where the reports' MathJax goes, beside the HTML of ``reports/<run_name>/``.
MATHJAX_DIR = "mathjax"
#: MathJax 2 as Jupyter's classic notebook served it (``jupyter-server-mathjax``): the TeX input, the
#: HTML-CSS output with the STIX-Web fonts the package ships (its TeX fonts are left out), safe mode.
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe,align3gr-offline"
_OFFLINE_CONFIG = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
                   imageFont: null}, menuSettings: {renderer: "HTML-CSS"}});
MathJax.Ajax.loadComplete("[MathJax]/config/align3gr-offline.js");
"""


def copy_mathjax(out: Path) -> Path:
    """Copy MathJax (from the ``jupyter-server-mathjax`` package: input TeX, output HTML-CSS, the STIX-Web
    fonts, English only) into ``out/mathjax/`` once, with a small config file that points HTML-CSS at those
    fonts; returns the ``MathJax.js`` to load. nbconvert's default loads it from a CDN: offline, every
    equation would stay raw ``$$...$$``."""
    import jupyter_server_mathjax

    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dest = out / MATHJAX_DIR
    if not (dest / "MathJax.js").exists():
        unneeded = {"SVG", "localization"}  # another output (2.9 MB) and the 30 languages of the menus

        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=lambda folder, names: [n for n in names if n in unneeded])
    (dest / "config" / "align3gr-offline.js").write_text(_OFFLINE_CONFIG)
    return dest / "MathJax.js"


def render_report(cfg: RunConfig, reports_dir: Path | None = None, results: list[dict[str, Any]] | None = None,
                  notebooks: dict[str, Path] | None = None) -> Path:
    """Write ``reports/<run_name>/``: HTML per executed notebook, ``metrics.json``, ``summary.md``.

    ``notebooks``: stage name -> executed notebook to render (a view's, :func:`view_pipeline`); by default
    each finished stage's ``runs/<run_name>/<stage>/<stage>.ipynb``. The HTML reads offline: MathJax
    beside it (:func:`copy_mathjax`), progress bars frozen as text dropped (:func:`drop_progress_bars`).
    ``summary.md`` leads with one row per model (:func:`~align3gr_kit.report.pipeline_report.summary_table`),
    then each stage's report and wall time; every metric stays in ``metrics.json``. ``results`` (the
    runner's per-stage statuses) puts a failed stage, its error and its notebook at the top of the
    summary and under ``"failed"`` in ``metrics.json``.
    """
    from nbconvert import HTMLExporter

    from align3gr_kit.report.pipeline_report import summary_markdown

    out = Path(reports_dir or project_root() / "reports") / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(mathjax_url=f"{MATHJAX_DIR}/MathJax.js?config={MATHJAX_CONFIG}")
    copy_mathjax(out)
    metrics: dict[str, Any] = {}
    stage_lines = ["| stage | report | wall time (s) |", "|---|---|---|"]
    for stage in STAGES:
        folder = cfg.run_dir / stage.name
        nb_path = (notebooks or {}).get(stage.name) or folder / stage.notebook
        manifest = load_manifest(folder / MANIFEST) if nb_path.exists() else None
        if manifest is None:  # not run by papermill, not finished, or its manifest unreadable (warned)
            continue
        metrics[stage.name] = manifest.get("metrics", {})
        body, _ = exporter.from_notebook_node(drop_progress_bars(nbformat.read(nb_path, as_version=4)))
        with atomic_path(out / f"{stage.name}.html") as tmp:
            tmp.write_text(body, encoding="utf-8")
        stage_lines.append(f"| {stage.name} | [{stage.name}.html]({stage.name}.html) | {manifest.get('wall_seconds', '')} |")
    lines = [f"# Run `{cfg.run_name}`", "",
             f"Dataset: `{cfg.data.dataset}`, seed {cfg.seed}, smoke {cfg.smoke}. Every metric of every stage: "
             "`metrics.json`.", "", *summary_markdown(cfg), "", "## Stages", "", *stage_lines]
    failed = [r for r in results or [] if r.get("status") == "failed"]
    stopped = [r for r in results or [] if r.get("status") == "interrupted"]
    if stopped:
        metrics["interrupted"] = {k: stopped[0][k] for k in ("stage", "seconds", "error")}
        lines[2:2] = [f"**INTERRUPTED: {stopped[0]['error']}.**", ""]
    elif failed:
        f = failed[0]
        metrics["failed"] = {k: f[k] for k in ("stage", "cell", "error", "notebook")}
        lines[2:2] = [f"**FAILED: stage {f['stage']}** (cell {f['cell']}): {f['error']}. "
                      f"The failed notebook is `{f['notebook']}`.", ""]
    write_json(out / "metrics.json", metrics)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out
