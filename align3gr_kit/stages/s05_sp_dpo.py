"""Stage 05: self-play Softmax-DPO, Easy -> Medium -> Hard (SCID prefix overlap)."""

from __future__ import annotations

from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.dpo.pipeline import run_dpo
from align3gr_kit.stages.contract import StageRun


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Train the stages of ``dpo.sp_stages``, each stage's policy the next one's reference, with
    Recall/NDCG after each (:func:`align3gr_kit.dpo.pipeline.run_dpo` with
    :class:`~align3gr_kit.dpo.pipeline.SelfPlay`); writes :class:`align3gr_kit.dpo.artifacts.DPOArtifacts`.
    Returns the flat metrics (``<label>/<split>/<metric>``)."""
    return run_dpo(cfg, "sp", stage)["metrics"]
