"""What every notebook's setup cell calls (config from the flat parameters, seeding, plotly set-up,
the stage's :class:`StageRun`), figures saved into the stage folder, deterministic tables."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import StageRun, StageView, check_stage, get_stage
from align3gr_kit.utils import project_root, seed_everything

#: The parameters cell's ``config = None`` means this environment variable (``make lab`` sets it), else smoke.
CONFIG_ENV = "ALIGN3GR_CONFIG"
SMOKE_CONFIG = "configs/smoke.yaml"
MODES = ("auto", "view", "run")


def notebook_config(config: str | None) -> str:
    """The config a notebook uses: ``config`` when given, else ``$ALIGN3GR_CONFIG``, else the smoke config."""
    return config or os.environ.get(CONFIG_ENV) or str(project_root() / SMOKE_CONFIG)


def start_stage(
    stage: str,
    config: str | None = None,
    mode: str = "auto",
    run_name: str | None = None,
    seed: int | None = None,
    smoke: bool | None = None,
    dataset: str | None = None,
    data_path: str | None = None,
    runs_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[RunConfig, StageRun | StageView]:
    """Build the run config from a notebook's parameters, seed everything, set plotly up, and open the stage.

    ``config`` None: :func:`notebook_config`. ``None`` parameters keep the YAML's values. ``mode``:
    ``view`` draws the finished stage from its artifacts (:class:`StageView`: trains nothing, locks
    nothing, writes nothing under the run; :class:`~align3gr_kit.stages.contract.StageNotFinished` when
    it has not finished), ``run`` (re)makes it (:class:`StageRun`), ``auto`` views it when it is finished
    and current (:func:`~align3gr_kit.stages.contract.check_stage`), else runs it. Prints one line: the
    run, the dataset and what it does. Returns ``(cfg, stage)``.

    In run mode, by hand, the stage holds its own stage lock until ``stage.finish`` (or the kernel ends):
    another notebook may run another stage of the same run meanwhile; run by ``run``, the command holds
    the run's lock.
    """
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r} in the parameters cell; use one of {', '.join(MODES)}")
    config = notebook_config(config)
    cfg = RunConfig.from_yaml(
        config, overrides=overrides, source="notebook parameters", run_name=run_name, seed=seed, smoke=smoke,
        dataset=dataset, data_path=data_path, runs_dir=runs_dir,
    )
    seed_everything(cfg.seed)
    setup_plotly()
    name = get_stage(stage).name
    state, problem = check_stage(cfg, get_stage(name))
    where = f"run {cfg.run_name!r} on {cfg.data.dataset!r} (seed {cfg.seed})"
    if mode == "view" or (mode == "auto" and state == "current"):
        view = StageView(cfg, name, config=_shown(config))
        m = view.manifest
        note = "" if view.current else "; trained with other settings than this config's (mode = \"run\" re-trains it)"
        print(f"{where}: VIEWS the finished stage {name} (trained {m.get('finished_at', '?')} in "
              f"{float(m.get('wall_seconds', 0)):.0f} s{note}); nothing is trained or written")
        return cfg, view
    why = {"missing": "not finished yet", "changed": "its settings or inputs changed",
           "damaged": problem, "current": "mode = \"run\""}[state]
    print(f"{where}: RUNS stage {name} ({why}), writing to {cfg.run_dir.name}/{name}")
    return cfg, StageRun(cfg, name)


def _shown(config: str) -> str:
    """``config`` relative to the project when it lies inside it (for messages that name a command)."""
    path = os.path.abspath(config)
    root = str(project_root())
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else config


def setup_plotly() -> None:
    """Pick a renderer that survives where the notebook goes.

    plotly >= 6.1 defaults to ``plotly_mimetype`` in a kernel, which nbconvert's HTML export drops.
    The runner sets ``PLOTLY_RENDERER=notebook`` (figures embedded with plotly.js, offline) for the
    reports; interactive JupyterLab and the committed notebooks keep the light mimetype output.
    """
    import plotly.io as pio

    pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype")
    pio.templates.default = "plotly_white"


def save_figure(fig, stage_run: StageRun | StageView, name: str):
    """Save ``fig`` as ``figures/<name>.html`` (plotly.js beside it, works offline) and return it; in view
    mode only return it (a view writes nothing under the run)."""
    if stage_run.viewing:
        return fig
    path = stage_run.path(f"figures/{name}.html")
    fig.write_html(path, include_plotlyjs="directory", full_html=True)
    return fig


def table(df: pd.DataFrame, decimals: int = 4) -> str:
    """A deterministic plain-text table: floats rounded to ``decimals``, no index noise."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(decimals)
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 80):
        return out.to_string(index=False)
