"""What stage 03 leaves for SFT: the multi-task dataset and the backbone's tokenizer with SCID tokens."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SFT_DATASET = "sft_dataset"
TOKENIZER = "tokenizer"


@dataclass
class SFTData:
    """The outputs of ``03_sft_prompts``.

    Attributes:
        sft: ``datasets.Dataset`` with ``task``, ``prompt``, ``completion`` (and bookkeeping) columns.
        tokenizer: the backbone's tokenizer holding every SCID token (``tiny-llama``: its trained BPE).
    """

    sft: Any
    tokenizer: Any

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        _save_folder(lambda tmp: _save_dataset(self.sft, tmp), folder / SFT_DATASET)
        _save_folder(lambda tmp: self.tokenizer.save_pretrained(str(tmp)), folder / TOKENIZER)

    @classmethod
    def load(cls, folder: str | Path) -> "SFTData":
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        folder = Path(folder)
        return cls(load_from_disk(str(folder / SFT_DATASET)), AutoTokenizer.from_pretrained(str(folder / TOKENIZER)))


def _save_dataset(dataset: Any, folder: Path) -> None:
    """``dataset.save_to_disk(folder)`` without datasets' progress bar (a second here; in a notebook it is a
    widget whose saved text is a bar frozen at 0% in the committed outputs and the reports)."""
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(folder))
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _save_folder(write, target: Path) -> None:
    """Write a folder beside ``target`` then swap it in, so a crash never leaves half a folder."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
