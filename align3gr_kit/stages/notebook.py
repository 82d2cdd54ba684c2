"""What every notebook's setup cell calls (config from the flat parameters, seeding, plotly set-up,
the stage's :class:`StageRun`), figures saved into the stage folder, deterministic tables."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.utils import seed_everything


def start_stage(
    stage: str,
    config: str,
    run_name: str | None = None,
    seed: int | None = None,
    smoke: bool | None = None,
    dataset: str | None = None,
    data_path: str | None = None,
    runs_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[RunConfig, StageRun]:
    """Build the run config from a notebook's parameters, seed everything, set plotly up.

    ``None`` parameters keep the YAML's values. Returns ``(cfg, stage_run)``. Run by hand, the stage
    holds the run's lock until ``stage.finish`` (or the kernel ends); run by ``run``, the command holds it.
    """
    cfg = RunConfig.from_yaml(
        config, overrides=overrides, source="notebook parameters", run_name=run_name, seed=seed, smoke=smoke,
        dataset=dataset, data_path=data_path, runs_dir=runs_dir,
    )
    seed_everything(cfg.seed)
    setup_plotly()
    return cfg, StageRun(cfg, stage)


def setup_plotly() -> None:
    """Pick a renderer that survives where the notebook goes.

    plotly >= 6.1 defaults to ``plotly_mimetype`` in a kernel, which nbconvert's HTML export drops.
    The runner sets ``PLOTLY_RENDERER=notebook`` (figures embedded with plotly.js, offline) for the
    reports; interactive JupyterLab and the committed notebooks keep the light mimetype output.
    """
    import plotly.io as pio

    pio.renderers.default = os.environ.get("PLOTLY_RENDERER", "plotly_mimetype")
    pio.templates.default = "plotly_white"


def save_figure(fig, stage_run: StageRun, name: str):
    """Save ``fig`` as ``figures/<name>.html`` (plotly.js beside it, works offline) and return it."""
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
