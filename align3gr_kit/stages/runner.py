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
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import (
    MANIFEST,
    STAGES,
    Interrupted,
    Stage,
    check_stage,
    clean_leftovers,
    drop_checkpoints,
    drop_stale_checkpoints,
    find_identical_stage,
    get_stage,
    load_manifest,
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
                 render: bool = True, reports_dir: Path | None = None, verify: bool = False) -> dict[str, Any]:
    """Execute the selected stages in order; returns ``{"ok", "run_dir", "stages": [...], "report"}``.

    Holds the run's lock throughout (:func:`~align3gr_kit.stages.contract.run_lock`: raises
    :class:`~align3gr_kit.stages.contract.RunInUse` at once when another command holds it). With
    ``resume``, a finished stage whose artifacts fail their check (``verify``: hash every file) is re-run
    with one line saying which file. Ctrl-C / SIGTERM in a stage removes its partial folder, writes the
    report, and raises :class:`~align3gr_kit.stages.contract.Interrupted` (``.result``: the return value).
    """
    with run_lock(cfg):
        return _run_pipeline(cfg, config_path, stages, resume, overrides, kernel_name, render, reports_dir, verify)


def _run_pipeline(cfg: RunConfig, config_path: str, stages: list[str] | None, resume: bool,
                  overrides: dict[str, Any] | None, kernel_name: str, render: bool, reports_dir: Path | None,
                  verify: bool) -> dict[str, Any]:
    import papermill as pm

    chosen = [get_stage(s) for s in stages] if stages else available_stages()
    chosen = sorted(set(chosen), key=STAGES.index)
    missing = [s.notebook for s in chosen if not (notebooks_dir() / s.notebook).exists()]
    if missing:
        raise FileNotFoundError(f"notebooks/{missing[0]}: notebook missing for the requested stage")
    params = {
        "config": str(resolve_path(config_path, must_exist=True)),
        "run_name": cfg.run_name,
        "seed": cfg.seed,
        "smoke": cfg.smoke,
        "runs_dir": str(resolve_path(cfg.runs_dir)),
        "overrides": {k: v for k, v in (overrides or {}).items() if k not in ("run_name", "seed")},
    }
    env_before = os.environ.get("PLOTLY_RENDERER")
    # Figures embedded with plotly.js so that the HTML reports are interactive and offline.
    os.environ["PLOTLY_RENDERER"] = "notebook"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "align3gr-numba"))
    results: list[dict[str, Any]] = []
    ok = True
    interrupted: Interrupted | None = None
    clean_leftovers(cfg.run_dir)
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
                with open(kernel_log, "wb") as log:
                    pm.execute_notebook(
                        str(notebooks_dir() / stage.notebook), str(tmp), parameters=params,
                        kernel_name=kernel_name, cwd=str(notebooks_dir()), progress_bar=False,
                        log_output=False, request_save_on_cell_execute=False,
                        kernel_manager_class=_quiet_kernel_manager(log), shutdown_kernel="immediate",
                    )
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
    finally:
        if env_before is None:
            os.environ.pop("PLOTLY_RENDERER", None)
        else:
            os.environ["PLOTLY_RENDERER"] = env_before
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


def _quiet_kernel_manager(log: Any) -> type:
    """A kernel manager class whose kernels write their own stderr into ``log`` (an open file), not
    the terminal: the TCP warning at start, and the ZMQ tracebacks of a kernel stopped mid-cell by an
    interrupt. What a cell prints still reaches the notebook (through the kernel's messages)."""
    from jupyter_client import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            kw.setdefault("stderr", log)
            return await super().start_kernel(**kw)

    return QuietKernelManager


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain(text: str) -> str:
    """``text`` without ANSI colour codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class _StageFailed(Exception):
    pass


def render_report(cfg: RunConfig, reports_dir: Path | None = None, results: list[dict[str, Any]] | None = None) -> Path:
    """Write ``reports/<run_name>/``: HTML per executed notebook, ``metrics.json``, ``summary.md``.

    ``results`` (the runner's per-stage statuses) puts a failed stage, its error and its notebook
    at the top of the summary and under ``"failed"`` in ``metrics.json``.
    """
    import nbformat
    from nbconvert import HTMLExporter

    out = Path(reports_dir or project_root() / "reports") / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    metrics: dict[str, Any] = {}
    lines = [f"# Run `{cfg.run_name}`", "", f"Dataset: `{cfg.data.dataset}`, seed {cfg.seed}, smoke {cfg.smoke}.", "",
             "| stage | wall time (s) | metrics |", "|---|---|---|"]
    for stage in STAGES:
        folder = cfg.run_dir / stage.name
        nb_path = folder / stage.notebook
        manifest = load_manifest(folder / MANIFEST) if nb_path.exists() else None
        if manifest is None:  # not run by papermill, not finished, or its manifest unreadable (warned)
            continue
        metrics[stage.name] = manifest.get("metrics", {})
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        with atomic_path(out / f"{stage.name}.html") as tmp:
            tmp.write_text(body, encoding="utf-8")
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(manifest.get("metrics", {})).items())
        lines.append(f"| [{stage.name}]({stage.name}.html) | {manifest.get('wall_seconds', '')} | {shown} |")
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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
