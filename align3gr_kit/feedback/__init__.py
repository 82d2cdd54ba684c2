"""User feedback sources for RF-DPO (real-feedback preference alignment)."""

from align3gr_kit.feedback.oracle import LEVELS, RATED_LOADERS, FeedbackOracle, RatingsOracle, rating_level

__all__ = ["LEVELS", "RATED_LOADERS", "FeedbackOracle", "RatingsOracle", "rating_level"]
