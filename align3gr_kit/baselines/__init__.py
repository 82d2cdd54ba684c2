"""Non-generative baselines evaluated with the kit's protocol (full ranking, Recall/NDCG@{5,10})."""

from align3gr_kit.baselines.popularity import run_popularity_baseline
from align3gr_kit.baselines.sasrec import run_sasrec_baseline

__all__ = ["run_popularity_baseline", "run_sasrec_baseline"]
