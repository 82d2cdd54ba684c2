"""What stage 01 leaves for the later stages, and the one module that knows its file names.

Files in the stage folder:

* ``item_scids.json`` / ``user_scids.json``: :class:`ScidTable` (collisions resolved, see
  :mod:`align3gr_kit.tokenizer.unique`); the user table only when ``tokenizer.dual``.
* ``item_codes_raw.npy`` / ``user_codes_raw.npy``: RQ-VAE codes before resolution ``[n, levels]``.
* ``item_sc.npy`` / ``user_sc.npy``: SC embeddings ``[n, sc_dim]``.
* ``item_semantic.npy`` / ``user_semantic.npy`` / ``item_cf.npy`` / ``user_cf.npy``: frozen features used.
* ``item_codebooks.npy`` / ``user_codebooks.npy``: ``[levels, K, code_dim]``; ``tokenizer.pt``: all weights.
* ``tokenizer_history.json``: one dict per epoch of both phases; ``sasrec_history.json`` when SASRec
  was trained; ``summary.json``: the summary (the stage's metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from align3gr_kit.scid import ScidTable, load_scid_tables, save_scid_tables
from align3gr_kit.utils import atomic_path, read_json, write_json

FEATURES = ("item_semantic", "user_semantic", "item_cf", "user_cf")


@dataclass
class TokenizeArtifacts:
    """The outputs of ``01_tokenize`` (``None`` where a run made none).

    Attributes:
        items / users: SCID tables (collisions resolved).
        item_raw / user_raw: ``[n, levels]`` RQ codes before resolution.
        item_sc / user_sc: ``[n, sc_dim]`` SC embeddings (no users: a catalogue).
        history: the tokenizer's epoch log; summary: the stage's summary.
        item_codebooks / user_codebooks: ``[levels, K, code_dim]``.
        features: the frozen input features by name (:data:`FEATURES`).
        sasrec_history: SASRec's epoch log when it was trained.
        sasrec_ranks: ``{"valid", "test": [rows] int}``, that SASRec's 0-based full-ranking rank of
            each split row's target (row order), so a report can score it on any user subset.
        state_dict: the tokenizer's weights (written by :meth:`save`, not read back by :meth:`load`;
            :meth:`load_state_dict` reads them).
        folder: the folder :meth:`load` read (``None`` for artifacts built in memory), where
            :meth:`rqvae` finds the weights.
    """

    items: ScidTable
    users: ScidTable | None
    item_raw: np.ndarray
    user_raw: np.ndarray | None
    item_sc: np.ndarray
    user_sc: np.ndarray | None
    history: list[dict]
    summary: dict
    item_codebooks: np.ndarray | None = None
    user_codebooks: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    sasrec_history: list | None = None
    state_dict: dict | None = None
    sasrec_ranks: dict[str, np.ndarray] | None = None
    folder: Path | None = None

    def save(self, folder: str | Path) -> None:
        import torch

        f = Path(folder)
        f.mkdir(parents=True, exist_ok=True)
        save_scid_tables(f, self.items, self.users)
        arrays = {"item_codes_raw": self.item_raw, "user_codes_raw": self.user_raw, "item_sc": self.item_sc,
                  "user_sc": self.user_sc, "item_codebooks": self.item_codebooks,
                  "user_codebooks": self.user_codebooks, **self.features,
                  **{f"sasrec_ranks_{k}": np.asarray(v) for k, v in (self.sasrec_ranks or {}).items()}}
        for name, arr in arrays.items():
            if arr is not None:
                with atomic_path(f / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, arr)
        write_json(f / "tokenizer_history.json", self.history)
        if self.sasrec_history is not None:
            write_json(f / "sasrec_history.json", self.sasrec_history)
        if self.state_dict is not None:
            with atomic_path(f / "tokenizer.pt") as tmp:
                torch.save(self.state_dict, tmp)
        write_json(f / "summary.json", self.summary)

    @classmethod
    def load(cls, folder: str | Path) -> "TokenizeArtifacts":
        f = Path(folder)

        def opt(name: str):
            return np.load(f / f"{name}.npy") if (f / f"{name}.npy").exists() else None

        items, users = load_scid_tables(f)
        sasrec = f / "sasrec_history.json"
        return cls(items, users, np.load(f / "item_codes_raw.npy"), opt("user_codes_raw"), np.load(f / "item_sc.npy"),
                   opt("user_sc"), read_json(f / "tokenizer_history.json"), read_json(f / "summary.json"),
                   opt("item_codebooks"), opt("user_codebooks"),
                   {n: a for n in FEATURES if (a := opt(n)) is not None},
                   read_json(sasrec) if sasrec.exists() else None,
                   sasrec_ranks={k: a for k in ("valid", "test") if (a := opt(f"sasrec_ranks_{k}")) is not None} or None,
                   folder=f)

    @staticmethod
    def load_state_dict(folder: str | Path) -> dict:
        """The tokenizer's weights saved in ``folder``."""
        import torch

        return torch.load(Path(folder) / "tokenizer.pt", weights_only=True)

    def rqvae(self, side: str = "item"):
        """The trained RQ-VAE of ``side`` (``item``/``user``), rebuilt from ``tokenizer.pt`` in :attr:`folder`
        (eval mode, CPU). Its input is the SC embedding (:attr:`item_sc` / :attr:`user_sc`); the sizes
        come from the saved weights, so no config is needed.

        Raises:
            ValueError: the artifacts were not loaded from a folder, or the run has no RQ-VAE for ``side``.
        """
        from align3gr_kit.tokenizer.rqvae import RQVAE

        if self.folder is None:
            raise ValueError("these tokenizer artifacts were built in memory; load them with "
                             "TokenizeArtifacts.load(<run>/01_tokenize) to read the RQ-VAE weights")
        prefix = f"{side}_rq."
        state = {k[len(prefix):]: v for k, v in self.load_state_dict(self.folder).items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{self.folder / 'tokenizer.pt'} has no {side} RQ-VAE "
                             "(user SCIDs need tokenizer.dual: true)")
        levels, size, code_dim = state["quantizer.codebooks"].shape
        hidden, in_dim = state["encoder.0.weight"].shape
        model = RQVAE(in_dim, hidden, code_dim, levels, size)
        model.load_state_dict(state)
        return model.eval()
