"""What a training stage leaves: the saved model, the trainer's log and the evaluation metrics.

Stage ``04_sft`` writes them at the top of its folder; each DPO stage (``05_sp_dpo``/``06_rf_dpo``)
writes the same files per sub-stage (:mod:`align3gr_kit.dpo.artifacts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align3gr_kit.utils import read_json, write_json

MODEL = "model"
LOG_HISTORY = "log_history.json"
METRICS = "results.json"


def write_log_history(folder: str | Path, history: list[dict]) -> Path:
    return write_json(Path(folder) / LOG_HISTORY, history)


def write_metrics(folder: str | Path, metrics: dict[str, Any]) -> Path:
    return write_json(Path(folder) / METRICS, metrics)


@dataclass
class SFTArtifacts:
    """The outputs of ``04_sft``, read from its folder.

    Attributes:
        folder: the stage folder; ``model_dir`` holds the model (LoRA merged), its tokenizer and SCID
            tables, loadable with :func:`align3gr_kit.model.load_model`.
    """

    folder: Path

    @classmethod
    def load(cls, folder: str | Path) -> "SFTArtifacts":
        folder = Path(folder)
        if not (folder / MODEL).exists():
            raise FileNotFoundError(f"{folder / MODEL}: no saved SFT model; re-run stage 04_sft")
        return cls(folder)

    @property
    def model_dir(self) -> Path:
        return self.folder / MODEL

    @property
    def log_history(self) -> list[dict]:
        """The trainer's ``log_history`` (loss every ``sft.logging_steps``)."""
        return read_json(self.folder / LOG_HISTORY)

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"train": {...}, "valid": {...}, "test": {...}, "model_dir", "metrics": flat}``."""
        return read_json(self.folder / METRICS)

    def load_model(self, dtype: str = "auto", trust_remote_code: bool = False):
        """``(model, tokenizer, item_scids, user_scids | None)``."""
        from align3gr_kit.model.backbone import load_model

        return load_model(self.model_dir, dtype, trust_remote_code)
