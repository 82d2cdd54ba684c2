"""What stage 00 leaves for the later stages: the dataset in canonical form and its split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split

DATASET = "dataset"
SPLIT = "split"


class DataArtifacts:
    """The outputs of ``00_data``: ``dataset`` (:class:`RecDataset`) and ``split`` (:class:`Split`).

    Built from objects (``DataArtifacts(ds, split)``) or read from a folder (:meth:`load`), in which
    case each part is read when first used.
    """

    def __init__(self, dataset: RecDataset | None = None, split: Split | None = None, folder: str | Path | None = None):
        if folder is None and (dataset is None or split is None):
            raise ValueError("DataArtifacts needs a dataset and a split, or the folder they were saved in")
        self._dataset, self._split, self.folder = dataset, split, Path(folder) if folder else None

    @property
    def dataset(self) -> RecDataset:
        if self._dataset is None:
            self._dataset = RecDataset.load(self.folder / DATASET)
        return self._dataset

    @property
    def split(self) -> Split:
        if self._split is None:
            self._split = Split.load(self.folder / SPLIT)
        return self._split

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.dataset.save(folder / DATASET)
        self.split.save(folder / SPLIT)

    @classmethod
    def load(cls, folder: str | Path) -> "DataArtifacts":
        folder = Path(folder)
        if not (folder / SPLIT).exists():
            raise FileNotFoundError(f"{folder / SPLIT}: no split in this folder; re-run stage 00_data")
        return cls(folder=folder)

    def metrics(self) -> dict[str, Any]:
        """The numbers stage 00 records in its manifest (``data stats`` prints the same)."""
        ds, n = self.dataset, len(self.dataset.interactions)
        return {"users": ds.n_users, "items": ds.n_items, "interactions": n,
                "density": round(n / max(1, ds.n_users * ds.n_items), 6), **self.split.stats(),
                "has_ratings": ds.has_ratings,
                # with data.user_profile: from_history, how many items fed each profile part (0 = part absent)
                **({"profile_fields": ds.extra["profile_fields"]} if "profile_fields" in ds.extra else {})}
