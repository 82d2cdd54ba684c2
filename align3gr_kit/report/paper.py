"""Published reference numbers, for context only.

Align3GR paper (AAAI 2026), Table 1, Amazon "Instruments" (LC-Rec/LETTER split: leave-one-out,
history <= 20, full ranking, beam width 20). These come from LLM backbones (LLaMA-scale) trained on
GPUs; the kit's CPU runs use a tiny backbone, so a report shows them beside ours, clearly labelled,
never as a target the tiny model is expected to reach.

Layer: a writer; imports no module of :mod:`align3gr_kit.report` (nor of the kit).
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


# The kit's method labels and the paper's rows they correspond to (same method family, not the same model).
OURS_TO_PAPER: dict[str, str] = {
    "SASRec": "SASRec",
    "TIGER-style": "TIGER",
    "LC-Rec-style": "LC-Rec",
    "Align3GR (full)": "Align3GR",
}
PAPER_SETUP = "LLaMA-scale LLM backbone trained on GPUs, full Instruments data"


def same_data_as_paper(dataset: str, name: str = "") -> bool:
    """True only for the LC-Rec/LETTER Instruments files (``data.dataset: lcrec``, ``data.name: Instruments``),
    the split the paper's Table 1 uses."""
    return dataset == "lcrec" and name.lower() == "instruments"


def context_note(dataset: str, name: str = "", backbone: str = "", smoke: bool = False) -> str:
    """One paragraph saying how the published numbers relate to this run (dataset, backbone, scale)."""
    ours = f"{dataset}{f' ({name})' if name else ''}"
    model = backbone or "the config's backbone"
    if same_data_as_paper(dataset, name):
        data = "Same dataset and split as the paper (Instruments, LC-Rec/LETTER preprocessing)"
    elif dataset == "amazon2018" and "instrument" in name.lower():
        data = (f"The paper's numbers are on the LC-Rec/LETTER Instruments files; this run reads the same Amazon "
                f"category ({ours}) with the kit's own 5-core preprocessing, so the user/item sets differ")
    else:
        data = f"The paper's numbers are on another dataset (Amazon Instruments); this run is on {ours}"
    scale = " and on the smoke config (a few training steps)" if smoke else ""
    return (f"{data}. Paper: {PAPER_SETUP}. Ours: {model}{scale}. "
            "The columns are side by side for context, not as a comparison: a gap between them measures "
            "backbone and scale as much as method.")


def side_by_side(ours: pd.DataFrame, metrics: tuple[str, ...] = ("recall@10", "ndcg@10")) -> pd.DataFrame:
    """Our summary rows beside the paper's (``SOURCE``), one row per method, NaN where a side has none.

    Args:
        ours: a summary with ``method`` and the metric columns (e.g. :func:`~align3gr_kit.report.statistics.summarise`).
    Returns:
        Columns ``method``, ``paper method``, then ``"ours <metric>"`` and ``"paper <metric>"`` per metric.
    """
    paper = paper_table().set_index("method")
    rows, used = [], set()
    for _, r in ours.iterrows():
        p = OURS_TO_PAPER.get(r["method"])
        used.add(p)
        row = {"method": r["method"], "paper method": p or ""}
        for m in metrics:
            row[f"ours {m}"] = float(r[m]) if m in r and not pd.isna(r[m]) else float("nan")
            row[f"paper {m}"] = float(paper.loc[p, m]) if p in paper.index else float("nan")
        rows.append(row)
    for p in paper.index:
        if p not in used:
            rows.append({"method": "", "paper method": p,
                         **{k: v for m in metrics for k, v in ((f"ours {m}", float("nan")), (f"paper {m}", float(paper.loc[p, m])))}})
    return pd.DataFrame(rows)
