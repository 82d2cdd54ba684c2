"""Keeping the committed notebooks honest: re-execute them on the smoke config and strip volatile
metadata, so that nbval in CI compares real, stable outputs.

``python -m align3gr_kit notebooks refresh [--only 00,01]`` executes ``notebooks/*.ipynb`` in place
(in order, each with its default parameters = the smoke config) and then strips: cell execution
timestamps, widget state, papermill metadata, progress bars frozen as text (:func:`drop_progress_bars`;
they still show live in Lab and on the command line); execution counts are renumbered 1..n per notebook.

Notebook 07 reads the papers' tables (``ablate --table``); so that it is executed over a real table
file, not only the commands that would make one, ``python -m align3gr_kit notebooks tables`` makes
:data:`SMOKE_TABLE` on the smoke config first (``make test`` runs it before nbval; ``refresh`` before
re-executing 07).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat

from align3gr_kit.stages.contract import STAGES, get_stage
from align3gr_kit.stages.runner import drop_progress_bars, quiet_kernel_manager
from align3gr_kit.utils import atomic_path, project_root

VOLATILE_CELL_KEYS = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled")
#: The table notebook 07 shows on the smoke config: the DPO table (Align3GR Table 5) up to SP-DPO, one
#: seed, at the smoke budgets every smoke table runs with (``SMOKE_REPORT_OVERRIDES``); its files go
#: to ``runs/tables/synthetic/`` (smoke tables are never committed).
SMOKE_TABLE = {"name": "dpo", "upto": "sp"}


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove volatile metadata; renumber execution counts of code cells 1..n in order."""
    keep_top = {"kernelspec": nb.metadata.get("kernelspec"), "language_info": {"name": "python"}}
    nb.metadata = nbformat.NotebookNode({k: v for k, v in keep_top.items() if v})
    count = 0
    for cell in nb.cells:
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            has_run = cell.execution_count is not None
            if has_run:
                count += 1
                cell.execution_count = count
                for out in cell.outputs:
                    if "execution_count" in out:
                        out["execution_count"] = count
    return nb


def smoke_tables() -> dict:
    """Make :data:`SMOKE_TABLE` on ``configs/smoke.yaml`` (seed 0; rows recorded before are read) and
    return its document (:func:`align3gr_kit.report.tables.run_table`)."""
    from align3gr_kit.config import RunConfig
    from align3gr_kit.report.tables import run_table

    config = project_root() / "configs" / "smoke.yaml"
    cfg = RunConfig.from_yaml(str(config))
    return run_table(cfg, str(config), SMOKE_TABLE["name"], [cfg.seed], upto=SMOKE_TABLE["upto"])


def refresh(only: list[str] | None = None, timeout: int = 1800) -> list[Path]:
    """Execute the stage notebooks in place on their defaults, then strip them (before notebook 07:
    :func:`smoke_tables`, which it reads).

    Each runs in run mode (its parameters cell's ``mode`` set to ``"run"`` while it executes, the committed
    ``"auto"`` written back), so the committed outputs are those of a fresh smoke run, as nbval on a clean
    clone makes them, and on the smoke config even where ``$ALIGN3GR_CONFIG`` names another.
    """
    from nbclient import NotebookClient

    from align3gr_kit.stages.notebook import CONFIG_ENV

    names = [get_stage(s).notebook for s in only] if only else [s.notebook for s in STAGES]
    done = []
    config_env = os.environ.pop(CONFIG_ENV, None)
    try:
        for name in names:
            path = project_root() / "notebooks" / name
            if not path.exists():
                continue
            if name == get_stage("07").notebook:
                smoke_tables()
            print(f"executing {path.name}", file=sys.stderr)
            nb = nbformat.read(path, as_version=4)
            params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
            committed = params.source
            params.source = re.sub(r"^mode = .*$", 'mode = "run"', committed, count=1, flags=re.M)
            NotebookClient(nb, timeout=timeout, kernel_name="python3", kernel_manager_class=quiet_kernel_manager(),
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            params.source = committed
            strip_notebook(drop_progress_bars(nb))
            with atomic_path(path) as tmp:
                nbformat.write(nb, tmp)
            done.append(path)
    finally:
        if config_env is not None:
            os.environ[CONFIG_ENV] = config_env
    return done
