"""Which oracle trains RF-DPO, which one judges, and what users like in a model's top-10.

* :func:`training_oracle` builds the oracle ``dpo.rf_oracle`` names: ``ratings`` (logged training
  ratings only, :class:`RatingsOracle`), ``simulator`` (a rating model fit on the training split's
  ratings, :class:`SimulatorOracle`, grading its predicted mean rating), ``simulator_sampled`` (the
  same model grading like a noisy user: predicted rating plus its measured spread, so that dislikes
  occur about as often as in logged ratings) or ``ground_truth`` (the generator's own affinity,
  generated data only, :class:`GroundTruthOracle`).
* :func:`evaluation_oracle` is the judge of what users like, one that training did not use: the
  ground truth on generated data, else a simulator fit on ALL ratings (kept apart from the training
  simulator; see :func:`fit_evaluation_simulator`).
* :func:`align3gr_kit.evaluate.liked_share` grades every user's top-K list with it: the share of
  recommended items graded ``liked`` and their mean predicted rating
  (:func:`align3gr_kit.evaluate.evaluate_liked` recommends and grades in one call).
* :func:`agreement` compares two oracles on the same pairs. On the generated data, a simulator fit on
  logged ratings agrees poorly with the ground truth on random catalogue pairs: users rate mostly
  items of the categories they like, so the ratings never show how much they dislike the others
  (ratings missing not at random); on the default dataset it grades 1% of all pairs disliked where
  the truth grades 50%.

Imports of the kit: ``data.schema`` and the oracles of this package; never ``evaluate`` (which grades
lists with any oracle and sits below this package and ``dpo/``).
"""

from __future__ import annotations

from typing import Sequence

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.feedback.ground_truth import GroundTruthOracle
from align3gr_kit.feedback.oracle import LEVELS, FeedbackOracle, RatingsOracle
from align3gr_kit.feedback.simulator import SimulatorOracle, fit_evaluation_simulator

#: Values of ``dpo.rf_oracle``.
ORACLES = ("ratings", "simulator", "simulator_sampled", "ground_truth")


def training_oracle(kind: str, dataset: RecDataset, seed: int = 0, holdout: int = 2) -> FeedbackOracle:
    """The oracle that grades RF-DPO's preference data (``dpo.rf_oracle``); never sees a validation/test rating
    (``ground_truth`` knows no logged rating at all: it is the generator's noise-free affinity).

    Raises:
        ValueError: unknown ``kind``.
        DataError: the dataset has no ratings (``ratings``/``simulator``) or no generator (``ground_truth``).
    """
    if kind == "ratings":
        return RatingsOracle(dataset, holdout=holdout)
    if kind in ("simulator", "simulator_sampled"):
        return SimulatorOracle.fit(dataset, holdout=holdout, seed=seed, sampled=kind == "simulator_sampled")
    if kind == "ground_truth":
        return GroundTruthOracle.from_dataset(dataset)
    raise ValueError(f"dpo.rf_oracle: unknown oracle {kind!r}; choose one of {', '.join(ORACLES)}")


def evaluation_oracle(dataset: RecDataset, seed: int = 0) -> FeedbackOracle:
    """The judge of what users like: the generator's ground truth when ``dataset`` is the kit's generated data,
    else a simulator fit on ALL ratings (training and held-out). The second is kept apart from the training
    simulator (another fit, on more data) and must never grade preference data. With
    ``dpo.rf_oracle: ground_truth`` on generated data, training and judging share the truth: say so when
    reporting."""
    if dataset.name == "synthetic" and dataset.extra.get("generator"):
        return GroundTruthOracle.from_dataset(dataset)
    return fit_evaluation_simulator(dataset, seed=seed)


def optional_judge(dataset: RecDataset, seed: int = 0) -> FeedbackOracle | None:
    """:func:`evaluation_oracle`, or None for a dataset nothing can judge (no ratings, not generated)."""
    from align3gr_kit.data.schema import DataError

    try:
        return evaluation_oracle(dataset, seed=seed)
    except DataError:
        return None


def agreement(oracle: FeedbackOracle, reference: FeedbackOracle, user_ids: Sequence[int],
              item_ids: Sequence[int]) -> dict[str, float]:
    """How often ``oracle`` grades aligned (user, item) pairs as ``reference`` does (e.g. the training
    simulator against the generator's ground truth on random catalogue pairs, the items RF-DPO shows).

    Returns:
        ``accuracy`` and ``macro_f1`` (``sklearn.metrics``, levels as classes) over the pairs both grade,
        ``pairs`` (that count), and each oracle's share of every level (``oracle/liked``, ``reference/liked``...).
    """
    from sklearn.metrics import accuracy_score, f1_score

    a = oracle.levels(list(user_ids), list(item_ids))
    b = reference.levels(list(user_ids), list(item_ids))
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not both:
        raise ValueError("agreement(): the two oracles grade none of these pairs in common")
    xs, ys = zip(*both)
    out = {"accuracy": round(float(accuracy_score(ys, xs)), 4),
           "macro_f1": round(float(f1_score(ys, xs, average="macro", labels=list(LEVELS), zero_division=0)), 4),
           "pairs": len(both)}
    for name, levels in (("oracle", xs), ("reference", ys)):
        out.update({f"{name}/{lv}": round(levels.count(lv) / len(levels), 4) for lv in LEVELS})
    return out
