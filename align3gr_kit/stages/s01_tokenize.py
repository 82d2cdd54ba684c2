"""Stage 01: dual SCID tokenization (token level)."""

from __future__ import annotations

from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.tokenizer.pipeline import run_tokenize


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Frozen encoders, SC-MLPs with L_U2I, RQ-VAEs, unique SCIDs; writes
    :class:`align3gr_kit.tokenizer.artifacts.TokenizeArtifacts`. Returns the tokenizer's summary."""
    data = stage.input("00_data")
    return run_tokenize(cfg, data.dataset, data.split, stage.dir, progress=progress)
