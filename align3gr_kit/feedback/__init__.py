"""User feedback sources for RF-DPO (real-feedback preference alignment) and the judge of what users like.

``RatingsOracle`` (logged training ratings), ``SimulatorOracle`` (a rating model fit on the training
split's ratings), ``GroundTruthOracle`` (the generator's own affinity, generated data only);
``training_oracle(dpo.rf_oracle, dataset)`` picks one, ``evaluation_oracle(dataset)`` is the judge
(another model on other ratings, :mod:`align3gr_kit.feedback.judge`);
``align3gr_kit.evaluate.liked_share(users, top_k, oracle)`` scores recommendations by it.
"""

from align3gr_kit.feedback.evaluation import ORACLES, agreement, evaluation_oracle, optional_judge, training_oracle
from align3gr_kit.feedback.ground_truth import GroundTruthOracle
from align3gr_kit.feedback.judge import JUDGE_SEED_OFFSET, CrossFit, NeighbourJudge, cross_fit
from align3gr_kit.feedback.oracle import LEVELS, RATED_LOADERS, FeedbackOracle, RatingsOracle, rating_level
from align3gr_kit.feedback.simulator import (
    SimulatorOracle,
    calibration_figure,
    calibration_frame,
    fit_evaluation_simulator,
    heldout_table,
    save_simulator_report,
    split_ratings,
)

__all__ = [
    "JUDGE_SEED_OFFSET",
    "LEVELS",
    "ORACLES",
    "RATED_LOADERS",
    "CrossFit",
    "FeedbackOracle",
    "GroundTruthOracle",
    "NeighbourJudge",
    "RatingsOracle",
    "SimulatorOracle",
    "agreement",
    "calibration_figure",
    "calibration_frame",
    "cross_fit",
    "evaluation_oracle",
    "fit_evaluation_simulator",
    "heldout_table",
    "optional_judge",
    "rating_level",
    "save_simulator_report",
    "split_ratings",
    "training_oracle",
]
