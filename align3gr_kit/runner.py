"""Run the pipeline's notebooks headlessly through papermill and render ``reports/<run_name>/``.

Each stage notebook executes into ``runs/<run_name>/<stage>/<stage>.ipynb`` (written to a temp name
and renamed, so a crash never leaves a half-written notebook in place), with the run's parameters
injected. The notebook itself writes the stage's artifacts and ``manifest.json``. A failing cell
stops the run: its notebook is kept as ``<stage>.failed.ipynb`` (error cell marked) and the error is
printed; earlier stages stay intact. ``resume`` skips a stage whose manifest fingerprint equals the
current one (same config sections, same upstream stage) and whose notebook output exists.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.runs import STAGES, Stage, fingerprint, get_stage
from align3gr_kit.utils import atomic_path, project_root, read_json, resolve_path, write_json


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def available_stages() -> list[Stage]:
    """Stages whose notebook exists, in pipeline order."""
    return [s for s in STAGES if (notebooks_dir() / s.notebook).exists()]


def is_current(cfg: RunConfig, stage: Stage) -> bool:
    """True when the stage finished with the same fingerprint it would have now."""
    folder = cfg.run_dir / stage.name
    m = folder / "manifest.json"
    if not m.exists() or not (folder / stage.notebook).exists():
        return False
    return read_json(m).get("fingerprint") == fingerprint(cfg, stage)


def find_identical_stage(cfg: RunConfig, stage: Stage) -> Path | None:
    """Another run's folder for ``stage`` with the same fingerprint (same config sections, seed and
    upstream chain), so ablations and baselines that share their early stages compute them once.

    Folders holding the executed notebook come first; a stage finished by the command line
    (``tokenize``, ``train sft``...: manifest and artifacts, no notebook) is reused too, and the
    report of the run then has no HTML page for that stage.
    """
    want = fingerprint(cfg, stage)
    root = cfg.run_dir.parent
    if not root.is_dir():
        return None
    found: list[tuple[bool, Path]] = []
    for other in sorted(root.iterdir()):
        folder = other / stage.name
        if other == cfg.run_dir or not (folder / "manifest.json").exists():
            continue
        if read_json(folder / "manifest.json").get("fingerprint") == want:
            found.append((not (folder / stage.notebook).exists(), folder))
    return min(found)[1] if found else None


def reuse_stage(source: Path, dest: Path) -> None:
    """Copy a finished stage folder (hard links where possible: checkpoints are not duplicated)."""
    if dest.exists():
        shutil.rmtree(dest)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    tmp = dest.with_name(f".{dest.name}.reuse")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp, copy_function=link_or_copy)
    os.replace(tmp, dest)


def run_pipeline(cfg: RunConfig, config_path: str, stages: list[str] | None = None, resume: bool = False,
                 overrides: dict[str, Any] | None = None, kernel_name: str = "python3",
                 render: bool = True, reports_dir: Path | None = None) -> dict[str, Any]:
    """Execute the selected stages in order; returns ``{"ok", "run_dir", "stages": [...], "report"}``."""
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
    results, ok = [], True
    try:
        for stage in chosen:
            folder = cfg.run_dir / stage.name
            if resume and is_current(cfg, stage):
                results.append({"stage": stage.name, "status": "skipped (unchanged)"})
                print(f"[{stage.name}] unchanged, skipped (--resume)", file=sys.stderr)
                continue
            if resume and (source := find_identical_stage(cfg, stage)) is not None:
                reuse_stage(source, folder)
                results.append({"stage": stage.name, "status": f"reused from {source.parent.name}"})
                print(f"[{stage.name}] identical to {source}, reused (--resume)", file=sys.stderr)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            out_nb = folder / stage.notebook
            failed_nb = folder / stage.notebook.replace(".ipynb", ".failed.ipynb")
            print(f"[{stage.name}] running notebooks/{stage.notebook} -> {out_nb}", file=sys.stderr)
            t0 = time.time()
            with atomic_path(out_nb) as tmp:
                try:
                    pm.execute_notebook(
                        str(notebooks_dir() / stage.notebook), str(tmp), parameters=params,
                        kernel_name=kernel_name, cwd=str(notebooks_dir()), progress_bar=False,
                        log_output=False, request_save_on_cell_execute=False,
                    )
                except pm.PapermillExecutionError as e:
                    shutil.copyfile(tmp, failed_nb)
                    ok = False
                    results.append({"stage": stage.name, "status": "failed", "cell": e.exec_count,
                                    "error": f"{e.ename}: {e.evalue}", "notebook": str(failed_nb)})
                    print(f"[{stage.name}] FAILED in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                          f"  see {failed_nb}\n" + "".join(e.traceback[-3:]), file=sys.stderr)
                    raise _StageFailed from e
            if failed_nb.exists():
                failed_nb.unlink()
            manifest = read_json(folder / "manifest.json") if (folder / "manifest.json").exists() else {}
            results.append({"stage": stage.name, "status": "ok", "seconds": round(time.time() - t0, 1),
                            "metrics": manifest.get("metrics", {})})
    except _StageFailed:
        pass
    finally:
        if env_before is None:
            os.environ.pop("PLOTLY_RENDERER", None)
        else:
            os.environ["PLOTLY_RENDERER"] = env_before
    report = render_report(cfg, reports_dir) if render else None
    return {"ok": ok, "run_dir": str(cfg.run_dir), "stages": results, "report": str(report) if report else None}


class _StageFailed(Exception):
    pass


def render_report(cfg: RunConfig, reports_dir: Path | None = None) -> Path:
    """Write ``reports/<run_name>/``: HTML per executed notebook, ``metrics.json``, ``summary.md``."""
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
        nb_path, m_path = folder / stage.notebook, folder / "manifest.json"
        if not (nb_path.exists() and m_path.exists()):
            continue
        manifest = read_json(m_path)
        metrics[stage.name] = manifest.get("metrics", {})
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        with atomic_path(out / f"{stage.name}.html") as tmp:
            tmp.write_text(body, encoding="utf-8")
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(manifest.get("metrics", {})).items())
        lines.append(f"| [{stage.name}]({stage.name}.html) | {manifest.get('wall_seconds', '')} | {shown} |")
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
