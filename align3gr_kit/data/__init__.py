"""The data layer: loaders into one canonical form, the leave-one-out split, path resolution.

``load_dataset(cfg.data)`` is the one entry point; see :mod:`align3gr_kit.data.schema` for the form.
"""

from __future__ import annotations

from pathlib import Path

from align3gr_kit.config import DataConfig
from align3gr_kit.data.schema import DataError, RecDataset, kcore_or_fail
from align3gr_kit.data.split import Split, leave_one_out
from align3gr_kit.utils import project_root

__all__ = ["DataError", "RecDataset", "Split", "leave_one_out", "load_dataset", "find_data_path", "LOADERS"]

LOADERS = ("synthetic", "ml-100k", "lcrec", "amazon2018")
RATED = ("synthetic", "ml-100k", "amazon2018")  # loaders whose data carry 1-5 ratings
_HOW_TO_GET = {
    "ml-100k": "python -m align3gr_kit data download ml-100k (the official GroupLens archive)",
    "lcrec": "put <name>.inter.json (+ .item.json) from the LC-Rec/LETTER releases into data/lcrec/",
    "amazon2018": "download <Category>_5.json.gz and meta_<Category>.json.gz (Amazon Review Data 2018) into data/amazon2018/",
}


def find_data_path(cfg: DataConfig) -> Path:
    """The folder to read: ``data_path`` if given, else ``data/<dataset>/``, else ``../shared/data/<dataset>/``.

    A relative ``data_path`` is looked for in the working directory, the project root, ``data/`` and
    ``../shared/data/`` (so ``data_path: amazon-instruments`` finds the shared copy).
    """
    if cfg.data_path:
        p = Path(cfg.data_path).expanduser()
        root = project_root()
        candidates = [p] if p.is_absolute() else [Path.cwd() / p, root / p, root / "data" / p,
                                                  root.parent / "shared" / "data" / p]
        for c in candidates:
            if c.is_dir():
                return c.resolve()
        raise DataError(f"data_path {cfg.data_path!r}: no such folder (looked in {[str(c) for c in candidates]})")
    names = [cfg.dataset] + ([cfg.name] if cfg.name else [])
    candidates = [project_root() / "data" / n for n in names] + [project_root().parent / "shared" / "data" / n for n in names]
    for c in candidates:
        if c.is_dir():
            return c
    raise DataError(
        f"dataset {cfg.dataset!r}: no data found in {[str(c) for c in candidates]}; get it with "
        f"{_HOW_TO_GET.get(cfg.dataset, 'the dataset download')} or pass --data-path / data.data_path"
    )


def load_dataset(cfg: DataConfig, seed: int = 0) -> RecDataset:
    """Load the dataset ``cfg`` names in canonical form (``seed`` drives the synthetic generator).

    ``data.min_interactions`` reaches every file loader, which applies the k-core filter before it
    checks the per-user minimum (the fix that check advises must work); the generated set is filtered
    after it is made. ``data.max_users`` applies last.
    """
    if cfg.dataset == "synthetic":
        from align3gr_kit.data.synthetic import generate_synthetic

        ds = generate_synthetic(cfg.synthetic_users, cfg.synthetic_items, seed=seed)
    elif cfg.dataset == "ml-100k":
        from align3gr_kit.data.movielens import load_ml100k

        ds = load_ml100k(find_data_path(cfg), cfg.min_interactions)
    elif cfg.dataset == "lcrec":
        from align3gr_kit.data.lcrec import load_lcrec

        ds = load_lcrec(find_data_path(cfg), cfg.name, cfg.min_interactions)
    elif cfg.dataset == "amazon2018":
        from align3gr_kit.data.amazon import load_amazon2018

        ds = load_amazon2018(find_data_path(cfg), cfg.name, cfg.min_interactions or 5)
    else:
        raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; choose one of {', '.join(LOADERS)}")
    if cfg.min_interactions and cfg.dataset == "synthetic":
        ds = _kcore(ds, cfg.min_interactions)
    if cfg.max_users:
        ds = _first_users(ds, cfg.max_users)
    return ds


def _rebuild(ds: RecDataset, inter) -> RecDataset:
    from align3gr_kit.data.schema import reindex

    raw = inter.assign(user=ds.users.raw_id.to_numpy()[inter.user_id], item=ds.items.raw_id.to_numpy()[inter.item_id])
    items, users, interactions = reindex(ds.items, ds.users, raw[["user", "item", "timestamp", "rating"]], ds.source)
    return RecDataset(ds.name, items, users, interactions, ds.source, dict(ds.extra)).validate()


def _kcore(ds: RecDataset, k: int) -> RecDataset:
    inter = kcore_or_fail(ds.interactions, k, ds.source or ds.name, "user_id", "item_id")
    return ds if len(inter) == len(ds.interactions) else _rebuild(ds, inter)


def _first_users(ds: RecDataset, n: int) -> RecDataset:
    if n >= ds.n_users:
        return ds
    inter = ds.interactions[ds.interactions.user_id < n]
    return _rebuild(ds, inter)
