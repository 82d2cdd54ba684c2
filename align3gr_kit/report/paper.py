"""Published reference numbers, for context only.

Align3GR paper (AAAI 2026), Table 1, Amazon "Instruments" (LC-Rec/LETTER split: leave-one-out,
history <= 20, full ranking, beam width 20). These come from LLM backbones (LLaMA-scale) trained on
GPUs; the kit's CPU runs use a tiny backbone, so a report shows them beside ours, clearly labelled,
never as a target the tiny model is expected to reach.
"""

from __future__ import annotations

import pandas as pd

SOURCE = "Align3GR (AAAI 2026), Table 1, Instruments"
KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
INSTRUMENTS_TABLE1: dict[str, tuple[float, float, float, float]] = {
    "SASRec": (0.0751, 0.0947, 0.0627, 0.0690),
    "TIGER": (0.0870, 0.1058, 0.0737, 0.0797),
    "LC-Rec": (0.0824, 0.1006, 0.0712, 0.0772),
    "LETTER-TIGER": (0.0909, 0.1122, 0.0763, 0.0831),
    "Align3GR": (0.1103, 0.1442, 0.0947, 0.1113),
}


def paper_table() -> pd.DataFrame:
    """The published rows as a table with the kit's metric keys and a ``source`` column."""
    rows = [{"method": m, **dict(zip(KEYS, v)), "source": SOURCE} for m, v in INSTRUMENTS_TABLE1.items()]
    return pd.DataFrame(rows)
