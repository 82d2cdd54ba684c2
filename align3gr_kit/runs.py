"""Run directories, stages and manifests.

A run lives in ``<runs_dir>/<run_name>/``, one sub-folder per stage (``00_data``, ``01_tokenize``…).
Each stage writes its artifacts there and, last, a ``manifest.json`` (parameters, seed, package
versions, git commit, wall time, metrics, fingerprint). The next stage finds its inputs by stage
name, so nobody pastes paths. The ``fingerprint`` chains the stage's config sections and the
upstream stage's fingerprint: ``--resume`` skips a stage only when it is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.utils import git_commit, package_versions, read_json, write_json


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its folder/notebook name, the config sections it depends on, and the
    earlier stages whose artifacts it reads (02_codebooks only draws, so nothing depends on it)."""

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...] = ()

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"


_ALL = ("data", "tokenizer", "prompts", "model", "sft", "decode", "dpo")
STAGES: tuple[Stage, ...] = (
    Stage("00_data", ("data",)),
    Stage("01_tokenize", ("tokenizer",), ("00_data",)),
    Stage("02_codebooks", ("tokenizer",), ("01_tokenize",)),
    Stage("03_sft_prompts", ("prompts", "model"), ("01_tokenize",)),
    Stage("04_sft", ("model", "sft", "decode"), ("03_sft_prompts",)),
    Stage("05_sp_dpo", ("decode", "dpo"), ("04_sft",)),
    Stage("06_rf_dpo", ("decode", "dpo"), ("05_sp_dpo",)),
    Stage("07_report", _ALL, ("00_data",)),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    """Look a stage up by full name (``01_tokenize``) or number (``01``/``1``)."""
    if name in STAGE_BY_NAME:
        return STAGE_BY_NAME[name]
    for s in STAGES:
        if s.name.split("_")[0] == name.zfill(2):
            return s
    raise ValueError(f"unknown stage {name!r}; stages are {[s.name for s in STAGES]}")


def fingerprint(cfg: RunConfig, stage: Stage) -> str:
    """Hash of the stage's name, its config sections and its upstream stages' manifest fingerprints.

    Upstream fingerprints chain in everything earlier stages depended on, so a stage is "unchanged"
    exactly when nothing that fed it changed.
    """
    upstream = []
    for name in stage.upstream:
        m = cfg.run_dir / name / "manifest.json"
        upstream.append(read_json(m).get("fingerprint", "") if m.exists() else "missing")
    payload = f"{stage.name}|{cfg.section_hash(*stage.sections)}|{','.join(upstream)}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class StageRun:
    """The working folder of one stage of one run; ``finish`` writes its manifest.

    Create it at the start of a notebook (the wall clock starts then); call :meth:`input` to reach
    an earlier stage's folder (a clear error if that stage has not run), :meth:`path` for this
    stage's artifacts and :meth:`finish` last.
    """

    def __init__(self, cfg: RunConfig, stage: str):
        self.cfg = cfg
        self.stage = get_stage(stage)
        self.dir = cfg.run_dir / self.stage.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def path(self, name: str) -> Path:
        """A path inside this stage's folder (parents created)."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def input(self, stage: str) -> Path:
        """The folder of a finished earlier stage of the same run."""
        s = get_stage(stage)
        folder = self.cfg.run_dir / s.name
        if not (folder / "manifest.json").exists():
            raise FileNotFoundError(
                f"{folder}: stage {s.name} has not finished for run {self.cfg.run_name!r}; run it first: "
                f"python -m align3gr_kit run --config <your config> --stages {s.name.split('_')[0]} "
                f"(or execute notebooks/{s.notebook})"
            )
        return folder

    def finish(self, metrics: dict[str, Any] | None = None, artifacts: list[str] | None = None) -> Path:
        """Write ``manifest.json`` atomically and return its path."""
        manifest = {
            "stage": self.stage.name,
            "run_name": self.cfg.run_name,
            "seed": self.cfg.seed,
            "fingerprint": fingerprint(self.cfg, self.stage),
            "parameters": self.cfg.to_dict(),
            "metrics": metrics or {},
            "artifacts": sorted(artifacts) if artifacts is not None else sorted(
                str(p.relative_to(self.dir)) for p in self.dir.rglob("*") if p.is_file() and p.name != "manifest.json"
                and not p.name.endswith(".ipynb")
            ),
            "wall_seconds": round(time.time() - self.t0, 2),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "versions": package_versions(),
        }
        return write_json(self.dir / "manifest.json", manifest)


def read_manifest(cfg: RunConfig, stage: str) -> dict[str, Any] | None:
    m = cfg.run_dir / get_stage(stage).name / "manifest.json"
    return json.loads(m.read_text()) if m.exists() else None
