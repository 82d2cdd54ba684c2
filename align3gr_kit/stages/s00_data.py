"""Stage 00: load the dataset into the canonical form and split it leave-one-out."""

from __future__ import annotations

from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.data import leave_one_out, load_dataset
from align3gr_kit.data.artifacts import DataArtifacts
from align3gr_kit.data.profiles import apply_user_profiles
from align3gr_kit.stages.contract import StageRun


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Load ``cfg.data``, split it (history cap ``data.max_history``), set the user profiles as
    ``data.user_profile`` says, save :class:`DataArtifacts`.

    Returns the stage's metrics (users, items, interactions, split sizes...).
    """
    ds = load_dataset(cfg.data, seed=cfg.seed)
    split = leave_one_out(ds, cfg.data.max_history)
    # Profiles from history read the training part of the split only, so they come after it.
    art = DataArtifacts(apply_user_profiles(ds, split, cfg.data.user_profile), split)
    art.save(stage.dir)
    return art.metrics()
