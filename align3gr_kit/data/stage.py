"""Stage 00 as functions: the notebook's closing cell and the CLI commands share them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align3gr_kit.config import RunConfig
from align3gr_kit.data import RecDataset, Split, leave_one_out, load_dataset
from align3gr_kit.runs import StageRun, fingerprint, get_stage, read_manifest


def data_metrics(ds: RecDataset, split: Split) -> dict[str, Any]:
    """The numbers stage 00 records in its manifest (``data stats`` prints the same)."""
    n = len(ds.interactions)
    return {"users": ds.n_users, "items": ds.n_items, "interactions": n,
            "density": round(n / max(1, ds.n_users * ds.n_items), 6), **split.stats(), "has_ratings": ds.has_ratings}


def save_data_stage(stage: StageRun, ds: RecDataset, split: Split) -> Path:
    """Write ``dataset/``, ``split/`` and the manifest of stage 00; returns the manifest path."""
    ds.save(stage.path("dataset"))
    split.save(stage.path("split"))
    return stage.finish(metrics=data_metrics(ds, split))


def prepare_data(cfg: RunConfig) -> tuple[RecDataset, Split]:
    """The run's dataset and split: read from ``00_data`` when it is current, else built and saved there."""
    m = read_manifest(cfg, "00_data")
    folder = cfg.run_dir / "00_data"
    if m is not None and m.get("fingerprint") == fingerprint(cfg, get_stage("00_data")):
        return RecDataset.load(folder / "dataset"), Split.load(folder / "split")
    stage = StageRun(cfg, "00_data")
    ds = load_dataset(cfg.data, seed=cfg.seed)
    split = leave_one_out(ds, cfg.data.max_history)
    save_data_stage(stage, ds, split)
    return ds, split
