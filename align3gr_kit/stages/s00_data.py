"""Stage 00: load the dataset into the canonical form and split it leave-one-out."""

from __future__ import annotations

from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.data import leave_one_out, load_dataset
from align3gr_kit.data.artifacts import DataArtifacts
from align3gr_kit.stages.contract import StageRun


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Load ``cfg.data``, split it (history cap ``data.max_history``), save :class:`DataArtifacts`.

    Returns the stage's metrics (users, items, interactions, split sizes...).
    """
    ds = load_dataset(cfg.data, seed=cfg.seed)
    art = DataArtifacts(ds, leave_one_out(ds, cfg.data.max_history))
    art.save(stage.dir)
    return art.metrics()
