"""What a progressive DPO stage (``05_sp_dpo`` / ``06_rf_dpo``) leaves, and its file names.

Folder layout: ``history.json`` (rewritten after each sub-stage: the starting model's metrics, one
entry per trained sub-stage, the final model), one folder per sub-stage (``easy/``, ``medium/``…)
holding ``model/``, ``preferences.jsonl``, ``pair_margins.json``, ``log_history.json`` and ``results.json``, and a link
``model`` -> ``<last sub-stage>/model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align3gr_kit.train.artifacts import LOG_HISTORY, MODEL
from align3gr_kit.utils import read_json

HISTORY = "history.json"
PREFERENCES = "preferences.jsonl"
#: Per sub-stage: ``{"user_id": [per example], "reference": [[margin per rejected] per example],
#: "policy": [...]}``, margin = log pi(chosen|x) - log pi(rejected_j|x) (sums of response-token
#: log-probs) under the sub-stage's reference and under its trained policy.
PAIR_MARGINS = "pair_margins.json"


@dataclass
class DPOArtifacts:
    """The outputs of one DPO stage, read from its folder."""

    folder: Path
    history: dict[str, Any]  # {"start": metrics | None, "stages": [{"stage", "metrics", "train", ...}], "final_model"}

    @classmethod
    def load(cls, folder: str | Path) -> "DPOArtifacts":
        folder = Path(folder)
        if not (folder / HISTORY).exists():
            raise FileNotFoundError(f"{folder / HISTORY}: the DPO stage finished without its history; re-run it")
        return cls(folder, read_json(folder / HISTORY))

    @property
    def stages(self) -> list[str]:
        """Sub-stages in training order."""
        return [e["stage"] for e in self.history.get("stages", [])]

    @property
    def final_model_dir(self) -> Path:
        """The model of the last sub-stage (the next stage's starting policy and reference)."""
        if not self.stages:
            raise FileNotFoundError(f"{self.folder / HISTORY}: no finished sub-stage; re-run {self.folder.name}")
        return self.folder / self.stages[-1] / MODEL

    @property
    def model_dir(self) -> Path:
        """The model this stage ends with (:attr:`final_model_dir`)."""
        return self.final_model_dir

    def preferences(self, stage: str) -> list[dict]:
        """The preference examples a sub-stage trained on."""
        path = self.folder / stage / PREFERENCES
        if not path.exists():
            raise FileNotFoundError(f"{path}: no preference data for sub-stage {stage!r}")
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def pair_margins(self, stage: str) -> dict[str, list]:
        """A sub-stage's per-pair margins (:data:`PAIR_MARGINS`)."""
        path = self.folder / stage / PAIR_MARGINS
        if not path.exists():
            raise FileNotFoundError(f"{path}: no pair margins for sub-stage {stage!r} (stages run before they were "
                                    "kept); re-run the DPO stage")
        return read_json(path)

    def log_history(self, stage: str) -> list[dict]:
        return read_json(self.folder / stage / LOG_HISTORY)
