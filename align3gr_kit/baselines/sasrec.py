"""SASRec as a baseline: trained on the training split, full ranking over all items.

Protocol (LC-Rec / LETTER / Align3GR): the validation sample of a user is its capped history
``s[:n-2]`` -> ``s[n-2]`` and the test sample ``s[:n-1]`` -> ``s[n-1]``; the model trains on the
training sequences only (see :mod:`align3gr_kit.encoders.sasrec`) and keeps its best epoch by
validation NDCG@10.
"""

from __future__ import annotations

import time

from align3gr_kit.config import RunConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.encoders.sasrec import split_metrics, train_sasrec


def run_sasrec_baseline(cfg: RunConfig, dataset: RecDataset, split: Split, progress: bool = True) -> dict:
    """Train SASRec (``cfg.tokenizer.sasrec``, seed ``cfg.seed``) and evaluate it.

    Returns:
        ``{"valid": metrics, "test": metrics, "seconds": float, "best_epoch": int, "epochs": int}``,
        metrics with keys ``recall@5``, ``recall@10``, ``ndcg@5``, ``ndcg@10``.
    """
    t0 = time.time()
    result = train_sasrec(split, dataset.n_items, cfg.tokenizer.sasrec, cfg.seed, progress=progress)
    return {
        "valid": split_metrics(result.model, split, "valid"),
        "test": split_metrics(result.model, split, "test"),
        "seconds": round(time.time() - t0, 2),
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
    }
