"""Which oracle trains RF-DPO, which one judges, and what users like in a model's top-10.

* :func:`training_oracle` builds the oracle ``dpo.rf_oracle`` names: ``ratings`` (logged training
  ratings only, :class:`RatingsOracle`), ``simulator`` (a rating model fit on the training split's
  ratings, :class:`SimulatorOracle`, grading its predicted mean rating), ``simulator_sampled`` (the
  same model grading like a noisy user: predicted rating plus its measured spread, so that dislikes
  occur about as often as in logged ratings) or ``ground_truth`` (the generator's own affinity,
  generated data only, :class:`GroundTruthOracle`). On real data it sees only the ``oracle`` half of
  each user's training ratings (:func:`~align3gr_kit.feedback.judge.cross_fit`).
* :func:`evaluation_oracle` is the judge of what users like, independent of the training oracle: the
  generator's ground truth on generated data (there the training oracle is the simulator fit on the
  generated ratings, a noisy fitted view of it); else an item-kNN model fit on the other half of the
  training ratings plus the held-out ones (:class:`~align3gr_kit.feedback.judge.NeighbourJudge`):
  another model family, disjoint ratings, its own seed. ``dpo.rf_oracle: ground_truth`` on generated
  data makes the two one function again; :func:`agreement` then reports kappa 1.
* :func:`align3gr_kit.evaluate.liked_share` grades every user's top-K list with it: the share of
  recommended items graded ``liked`` and their mean predicted rating
  (:func:`align3gr_kit.evaluate.evaluate_liked` recommends and grades in one call).
* :func:`agreement` compares two oracles on the same pairs (RF-DPO records it on the items it showed:
  share of identical levels and Cohen's kappa). On the generated data, a simulator fit on logged
  ratings agrees poorly with the ground truth on random catalogue pairs: users rate mostly items of
  the categories they like, so the ratings never show how much they dislike the others (ratings
  missing not at random).

Imports of the kit: ``data.schema`` and the oracles of this package; never ``evaluate`` (which grades
lists with any oracle and sits below this package and ``dpo/``).
"""

from __future__ import annotations

from typing import Sequence

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.feedback.ground_truth import GroundTruthOracle
from align3gr_kit.feedback.judge import NeighbourJudge, cross_fit, has_generator, rows_digest
from align3gr_kit.feedback.oracle import LEVELS, FeedbackOracle, RatingsOracle
from align3gr_kit.feedback.simulator import SimulatorOracle

#: Values of ``dpo.rf_oracle``.
ORACLES = ("ratings", "simulator", "simulator_sampled", "ground_truth")


def training_oracle(kind: str, dataset: RecDataset, seed: int = 0, holdout: int = 2) -> FeedbackOracle:
    """The oracle that grades RF-DPO's preference data (``dpo.rf_oracle``); never sees a validation/test rating
    (``ground_truth`` knows no logged rating at all: it is the generator's noise-free affinity), and on
    real data only the ``oracle`` half of the training ratings (:func:`~align3gr_kit.feedback.judge.cross_fit`
    with ``seed``), so that no rating it learns from is one the judge learns from.

    Raises:
        ValueError: unknown ``kind``.
        DataError: the dataset has no ratings (``ratings``/``simulator``) or no generator (``ground_truth``).
    """
    if kind == "ground_truth":
        return GroundTruthOracle.from_dataset(dataset)
    if kind not in ORACLES:
        raise ValueError(f"dpo.rf_oracle: unknown oracle {kind!r}; choose one of {', '.join(ORACLES)}")
    seen = dataset
    if not has_generator(dataset):  # the judge is fit on real ratings too: keep the halves apart
        split = cross_fit(dataset, seed, holdout)
        seen = split.view(dataset, "oracle")
    if kind == "ratings":
        return RatingsOracle(seen, holdout=holdout)
    oracle = SimulatorOracle.fit(seen, holdout=holdout, seed=seed, sampled=kind == "simulator_sampled")
    if seen is not dataset:
        oracle.meta.update({"cross_fit": "oracle half", "rows_sha256": rows_digest(split.oracle_rows)})
    return oracle


def evaluation_oracle(dataset: RecDataset, seed: int = 0) -> FeedbackOracle:
    """The judge of what users like (see the module docstring): the generator's ground truth when
    ``dataset`` is the kit's generated data, else a :class:`~align3gr_kit.feedback.judge.NeighbourJudge`
    fit on the ratings the training oracle of the same ``seed`` never sees."""
    if has_generator(dataset):
        return GroundTruthOracle.from_dataset(dataset)
    return NeighbourJudge.fit(dataset, seed=seed)


def optional_judge(dataset: RecDataset, seed: int = 0) -> FeedbackOracle | None:
    """:func:`evaluation_oracle`, or None for a dataset nothing can judge (no ratings, not generated)."""
    from align3gr_kit.data.schema import DataError

    try:
        return evaluation_oracle(dataset, seed=seed)
    except DataError:
        return None


def agreement(oracle: FeedbackOracle, reference: FeedbackOracle, user_ids: Sequence[int],
              item_ids: Sequence[int]) -> dict[str, float]:
    """How often ``oracle`` grades aligned (user, item) pairs as ``reference`` does (e.g. RF-DPO's
    training oracle against the judge on the items the policy showed).

    Returns:
        ``accuracy`` (share of identical levels), ``kappa`` (Cohen's kappa: that share corrected for the
        agreement two independent graders with these level frequencies would reach by chance; 1 when
        both grade every pair alike, also when that is a single level) and ``macro_f1``
        (``sklearn.metrics``, levels as classes) over the pairs both grade, ``pairs`` (that count), and
        each oracle's share of every level (``oracle/liked``, ``reference/liked``...).
    """
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    a = oracle.levels(list(user_ids), list(item_ids))
    b = reference.levels(list(user_ids), list(item_ids))
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not both:
        raise ValueError("agreement(): the two oracles grade none of these pairs in common")
    xs, ys = zip(*both)
    # sklearn's kappa is 0/0 when both graders use one and the same level: they agree on every pair
    kappa = 1.0 if xs == ys else float(cohen_kappa_score(ys, xs, labels=list(LEVELS)))
    out = {"accuracy": round(float(accuracy_score(ys, xs)), 4),
           "kappa": round(0.0 if kappa != kappa else kappa, 4),
           "macro_f1": round(float(f1_score(ys, xs, average="macro", labels=list(LEVELS), zero_division=0)), 4),
           "pairs": len(both)}
    for name, levels in (("oracle", xs), ("reference", ys)):
        out.update({f"{name}/{lv}": round(levels.count(lv) / len(levels), 4) for lv in LEVELS})
    return out
