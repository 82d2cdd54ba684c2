"""A feedback simulator: a model of how any user would rate any item, fit on logged ratings.

RF-DPO shows the policy's own recommendations to users; offline, the standard stand-in for users
who react to items they never rated is a rating model fit on logged feedback. The kit fits a biased
matrix factorisation (Funk-SVD with user and item biases, Koren, Bell & Volinsky 2009, "Matrix
factorization techniques for recommender systems", eq. 5)::

    r_hat(u, i) = mu + b_u + b_i + p_u . q_i,   clipped to [1, 5]

with ``scikit-surprise``'s :class:`surprise.SVD` (a well-kept library for explicit ratings; the
same model Surprise benchmarks on MovieLens). After fitting, the parameters are copied into numpy
arrays indexed by the dataset's own ids, so predicting, saving and loading need no Surprise. A user
or item the fit never saw gets no bias and no factor term (Surprise's own rule).

Two limits, measured (see :func:`heldout_table` and :func:`align3gr_kit.feedback.agreement`):

* A predicted MEAN rating shrinks toward the average, so it almost never falls below 1.5: on
  ml-100k 0.3% of random (user, item) pairs grade ``disliked`` (8% of held-out logged ratings are 1s),
  and the Easy RF-DPO stage (liked vs disliked) finds almost no pairs. ``fit(..., sampled=True)``
  (``dpo.rf_oracle: simulator_sampled``) grades like a noisy user instead: the prediction plus a
  normal draw of the model's measured error, fixed per (seed, user, item).
* Ratings are missing not at random: users rate what they chose to consume. On the generated data
  a simulator fit on them grades 1% of random catalogue pairs disliked where the generator's truth
  grades 50%; use ``dpo.rf_oracle: ground_truth`` there to check RF-DPO with no model in between.

Leakage rule (the training simulator): :func:`split_ratings` marks each user's last ``holdout``
interactions (2 = validation + test of :func:`align3gr_kit.data.split.leave_one_out`) as held out,
and :meth:`SimulatorOracle.fit` only ever passes the ``train`` part to the model (on real data, RF-DPO
passes it only half of those, :func:`align3gr_kit.feedback.training_oracle`: the judge is fit on the other).
:func:`fit_evaluation_simulator` (fit on every rating) is a control in tests, never a judge or an oracle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from align3gr_kit.data.schema import DataError, RecDataset
from align3gr_kit.feedback.oracle import LEVELS, RATED_LOADERS, FeedbackOracle
from align3gr_kit.utils import atomic_path, write_json

#: Surprise SVD settings of the kit's simulator. Picked among five settings (factors 20-100,
#: 20-50 epochs, reg 0.02-0.1) on ml-100k's held-out ratings; they differ by < 0.02 RMSE.
DEFAULT_PARAMS = {"n_factors": 100, "n_epochs": 50, "lr_all": 0.005, "reg_all": 0.1}
PARAMS_FILE = "simulator.npz"
META_FILE = "simulator.json"


def levels_of(ratings: np.ndarray) -> np.ndarray:
    """Vectorised :func:`~align3gr_kit.feedback.oracle.rating_level` on rounded ratings: ``[n]`` -> ``[n]`` of
    0 disliked (< 1.5), 1 neutral (< 3.5), 2 liked; the rounding makes a prediction's level that of the
    nearest 1-5 star rating (so a prediction of 3.6 is "liked", like a logged 4)."""
    r = np.asarray(ratings, dtype=np.float64)
    return np.where(r < 1.5, 0, np.where(r < 3.5, 1, 2))


class PredictedRatingOracle(FeedbackOracle):
    """An oracle whose level of a pair is that of the 1-5 rating it predicts (:meth:`ratings`, rounded by
    :func:`levels_of`): the generator's ground truth and the kNN judge."""

    def level(self, user_id: int, item_id: int) -> str | None:
        return self.levels([user_id], [item_id])[0]

    def levels(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> list[str | None]:
        if len(user_ids) != len(item_ids):
            raise ValueError(f"levels(): {len(user_ids)} users for {len(item_ids)} items; pass aligned sequences")
        if not len(user_ids):
            return []
        return [LEVELS[k] for k in levels_of(self.ratings(user_ids, item_ids))]


def split_ratings(dataset: RecDataset, holdout: int = 2) -> pd.DataFrame:
    """Every rated interaction with the leave-one-out part it belongs to.

    Args:
        dataset: a dataset with ratings.
        holdout: interactions at the end of each chronological sequence that are held out (2: the
            last is ``test``, the one before ``valid``, exactly as :func:`leave_one_out` cuts).
    Returns:
        ``user_id, item_id, rating, part`` (``train``/``valid``/``test``), chronological per user, rows
        with no rating dropped.
    Raises:
        DataError: the dataset has no ratings.
    """
    if not dataset.has_ratings:
        raise DataError(
            f"{dataset.source or dataset.name}: dataset {dataset.name!r} has no ratings to fit a feedback "
            f"simulator on; use a loader that carries ratings ({', '.join(RATED_LOADERS)}) or dpo.rf_oracle: ground_truth "
            "on generated data"
        )
    inter = dataset.interactions
    # Same chronological order as RecDataset.sequences() and therefore as leave_one_out.
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), inter["user_id"].to_numpy()))
    df = inter.iloc[order][["user_id", "item_id", "rating"]].reset_index(drop=True)
    from_end = df.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    part = np.full(len(df), "train", dtype=object)
    if holdout >= 1:
        part[from_end == 0] = "test"
    if holdout >= 2:
        part[(from_end >= 1) & (from_end < holdout)] = "valid"
    df["part"] = part
    return df[df["rating"].notna()].reset_index(drop=True)


class SimulatorOracle(FeedbackOracle):
    """Feedback predicted by a biased matrix factorisation (see the module docstring).

    Build with :meth:`fit` (or :func:`fit_evaluation_simulator`), persist with :meth:`save` /
    :meth:`load`. Predicts for every (user, item) pair of the dataset, so it can judge recommendations
    the user never rated.

    Args:
        global_mean: ``mu``.
        user_bias / item_bias: ``[n_users]`` / ``[n_items]``.
        user_factors / item_factors: ``[n_users, k]`` / ``[n_items, k]`` (zero rows for unseen ids).
        meta: what it was fit on (``fit_on``: ``train`` or ``all``, ``holdout``, ``n_ratings``, params).
    """

    def __init__(self, global_mean: float, user_bias: np.ndarray, item_bias: np.ndarray,
                 user_factors: np.ndarray, item_factors: np.ndarray, meta: dict):
        self.global_mean = float(global_mean)
        self.user_bias = np.asarray(user_bias, dtype=np.float64)
        self.item_bias = np.asarray(item_bias, dtype=np.float64)
        self.user_factors = np.asarray(user_factors, dtype=np.float64)
        self.item_factors = np.asarray(item_factors, dtype=np.float64)
        self.meta = dict(meta)

    @classmethod
    def fit(cls, dataset: RecDataset, holdout: int = 2, seed: int = 0, sampled: bool = False,
            **params) -> "SimulatorOracle":
        """Fit on the ratings of each user's training interactions only (never the last ``holdout``).

        Args:
            dataset: a dataset with ratings.
            holdout: 2 = the leave-one-out validation and test interactions stay unseen; 0 = fit on
                everything (only for :func:`fit_evaluation_simulator`).
            seed: Surprise's ``random_state`` (factor initialisation and SGD order) and the seed of the
                sampled feedback.
            sampled: grade like a noisy user (see :meth:`levels`): the predicted rating plus a normal
                draw of sd ``meta["noise_sd"]``, the RMSE of a first fit on a seeded 90% of the training
                ratings on the other 10% (training ratings only). Off: grade the predicted mean rating,
                which rarely reaches the extremes (a mean predicted below 1.5 is rare).
            params: :class:`surprise.SVD` arguments overriding :data:`DEFAULT_PARAMS`.
        """
        ratings = split_ratings(dataset, holdout)
        train = ratings[ratings["part"] == "train"]
        if train.empty:
            raise DataError(f"{dataset.source or dataset.name}: no training ratings left to fit the simulator on")
        args = {**DEFAULT_PARAMS, **params}
        meta = {"fit_on": "train" if holdout else "all", "holdout": int(holdout), "n_ratings": int(len(train)),
                "seed": int(seed), "params": args, "dataset": dataset.name, "model": "surprise.SVD (biased MF)",
                "feedback": "sampled" if sampled else "expected"}
        if sampled:
            aside = np.random.default_rng(seed).random(len(train)) < 0.1
            first = cls(*_fit_svd(train[~aside], dataset.n_users, dataset.n_items, seed, args), meta={})
            spread = first.predict(train["user_id"][aside], train["item_id"][aside]) - train["rating"][aside]
            meta["noise_sd"] = round(float(np.sqrt(np.mean(spread.to_numpy() ** 2))), 6)
        return cls(*_fit_svd(train, dataset.n_users, dataset.n_items, seed, args), meta=meta)

    # ------------------------------------------------------------------ prediction
    def predict(self, user_ids: Sequence[int] | np.ndarray, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Predicted ratings ``[n]`` of aligned ``user_ids`` / ``item_ids`` ``[n]``, in ``[1, 5]``."""
        u = np.asarray(user_ids, dtype=np.int64)
        i = np.asarray(item_ids, dtype=np.int64)
        if u.shape != i.shape:
            raise ValueError(f"predict(): {u.shape} users for {i.shape} items; pass aligned arrays")
        est = (self.global_mean + self.user_bias[u] + self.item_bias[i]
               + np.einsum("nk,nk->n", self.user_factors[u], self.item_factors[i]))
        return np.clip(est, 1.0, 5.0)

    def ratings(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> np.ndarray:
        return self.predict(user_ids, item_ids)

    def level(self, user_id: int, item_id: int) -> str | None:
        return self.levels([user_id], [item_id])[0]

    def levels(self, user_ids: Sequence[int], item_ids: Sequence[int]) -> list[str | None]:
        """Level of each aligned pair: that of the predicted rating, or with ``sampled`` feedback of the
        predicted rating plus ``noise_sd`` times a standard normal fixed by (seed, user, item), so the same
        user judges the same item alike every time it is shown."""
        if len(user_ids) != len(item_ids):
            raise ValueError(f"levels(): {len(user_ids)} users for {len(item_ids)} items; pass aligned sequences")
        if not len(user_ids):
            return []
        r = self.predict(user_ids, item_ids)
        if self.meta.get("feedback") == "sampled":
            r = r + self.meta["noise_sd"] * pair_normal(user_ids, item_ids, len(self.item_bias), self.meta["seed"])
        return [LEVELS[k] for k in levels_of(r)]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``simulator.npz`` (parameters) and ``simulator.json`` (:attr:`meta`) into ``folder``."""
        folder = Path(folder)
        with atomic_path(folder / PARAMS_FILE) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, global_mean=self.global_mean, user_bias=self.user_bias, item_bias=self.item_bias,
                         user_factors=self.user_factors, item_factors=self.item_factors)
        write_json(folder / META_FILE, self.meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SimulatorOracle":
        """Read what :meth:`save` wrote."""
        folder = Path(folder)
        path = folder / PARAMS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no fitted simulator here; fit one with SimulatorOracle.fit(...).save(folder)")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads((folder / META_FILE).read_text())
        return cls(float(arrays.pop("global_mean")), meta=meta, **arrays)


def _fit_svd(train: pd.DataFrame, n_users: int, n_items: int, seed: int, args: dict) -> tuple:
    """Surprise SVD on ``train`` (``user_id, item_id, rating``): ``(mu, b_u [n_users], b_i [n_items],
    p_u [n_users, k], q_i [n_items, k])`` indexed by the dataset's ids (zeros for ids absent from ``train``)."""
    from surprise import SVD, Dataset, Reader

    trainset = Dataset.load_from_df(train[["user_id", "item_id", "rating"]], Reader(rating_scale=(1, 5))) \
        .build_full_trainset()
    algo = SVD(random_state=seed, **args).fit(trainset)
    k = args["n_factors"]
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    pu, qi = np.zeros((n_users, k)), np.zeros((n_items, k))
    # Surprise numbers users/items in order of first appearance: map back to the dataset's ids.
    users = np.array([trainset.to_raw_uid(x) for x in range(trainset.n_users)], dtype=np.int64)
    items = np.array([trainset.to_raw_iid(x) for x in range(trainset.n_items)], dtype=np.int64)
    bu[users], pu[users] = algo.bu, algo.pu
    bi[items], qi[items] = algo.bi, algo.qi
    return trainset.global_mean, bu, bi, pu, qi


def pair_normal(user_ids: Sequence[int], item_ids: Sequence[int], n_items: int, seed: int) -> np.ndarray:
    """``[n]`` standard normal draws, one per (seed, user, item), the same on every call.

    A counter-based generator: SplitMix64 (Steele, Lea & Flood 2014; constants of Vigna's
    ``splitmix64.c``) hashes the pair's index, the top 53 bits give a uniform in (0, 1), and the
    normal quantile (``scipy.special.ndtri``) maps it to a normal draw.
    """
    from scipy.special import ndtri

    key = (np.asarray(user_ids, dtype=np.uint64) * np.uint64(n_items) + np.asarray(item_ids, dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = key + np.uint64(0x9E3779B97F4A7C15) * np.uint64(int(seed) + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    return ndtri(u)


def fit_evaluation_simulator(dataset: RecDataset, seed: int = 0, **params) -> SimulatorOracle:
    """The same model fit on ALL ratings, training and held-out alike: an in-sample control (e.g. to show
    that the training simulator's predictions do not depend on the held-out ratings). It is not the
    judge (:func:`align3gr_kit.feedback.evaluation_oracle`, another model on other ratings) and must never
    grade preference data.
    """
    return SimulatorOracle.fit(dataset, holdout=0, seed=seed, **params)


def baseline_predictions(train: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """User-mean and item-mean predictions (training means; the global mean where a user/item has none)."""
    g = float(train["rating"].mean())
    um = train.groupby("user_id")["rating"].mean()
    im = train.groupby("item_id")["rating"].mean()
    return {
        "user-mean": pd.Series(users).map(um).fillna(g).to_numpy(dtype=np.float64),
        "item-mean": pd.Series(items).map(im).fillna(g).to_numpy(dtype=np.float64),
    }


def heldout_table(simulator: SimulatorOracle, dataset: RecDataset, holdout: int = 2) -> pd.DataFrame:
    """How well the simulator predicts the held-out ratings it never saw, beside two baselines.

    Scores the validation and test interactions' ratings (``holdout`` per user) with RMSE, and their
    3-level grades (disliked 1 / neutral 2-3 / liked 4-5) with accuracy and macro-F1
    (``sklearn.metrics``); the baselines predict each user's / each item's mean training rating. The
    simulator is scored by its predicted mean rating, also when it grades with ``sampled`` feedback.

    Returns:
        One row per model (``simulator``, ``user-mean``, ``item-mean``): ``model, rmse, level_accuracy,
        level_macro_f1, n`` (4 decimals).
    Raises:
        ValueError: the simulator was fit on held-out ratings (``meta.fit_on == "all"``).
    """
    from sklearn.metrics import accuracy_score, f1_score

    if simulator.meta.get("fit_on") != "train":
        raise ValueError("heldout_table(): this simulator was fit on all ratings (the evaluation simulator), so its "
                         "held-out scores would be in-sample; pass the training simulator (SimulatorOracle.fit)")
    ratings = split_ratings(dataset, holdout)
    train, held = ratings[ratings["part"] == "train"], ratings[ratings["part"] != "train"]
    users, items = held["user_id"].to_numpy(), held["item_id"].to_numpy()
    truth = held["rating"].to_numpy(dtype=np.float64)
    preds = {"simulator": simulator.predict(users, items), **baseline_predictions(train, users, items)}
    true_levels = levels_of(truth)
    rows = []
    for name, p in preds.items():
        lv = levels_of(p)
        rows.append({
            "model": name,
            "rmse": round(float(np.sqrt(np.mean((p - truth) ** 2))), 4),
            "level_accuracy": round(float(accuracy_score(true_levels, lv)), 4),
            "level_macro_f1": round(float(f1_score(true_levels, lv, average="macro", labels=[0, 1, 2],
                                                   zero_division=0)), 4),
            "n": int(len(truth)),
        })
    return pd.DataFrame(rows)


def calibration_frame(simulator: SimulatorOracle, dataset: RecDataset, holdout: int = 2,
                      n_bins: int = 8) -> pd.DataFrame:
    """Held-out ratings binned by predicted rating: ``bin_center, predicted, observed, n`` per non-empty bin
    (``predicted`` / ``observed`` are the mean predicted / logged rating in the bin; equal-width bins on [1, 5])."""
    ratings = split_ratings(dataset, holdout)
    held = ratings[ratings["part"] != "train"]
    pred = simulator.predict(held["user_id"].to_numpy(), held["item_id"].to_numpy())
    edges = np.linspace(1.0, 5.0, n_bins + 1)
    idx = np.clip(np.digitize(pred, edges[1:-1]), 0, n_bins - 1)
    df = pd.DataFrame({"bin": idx, "predicted": pred, "observed": held["rating"].to_numpy(dtype=np.float64)})
    out = df.groupby("bin").agg(predicted=("predicted", "mean"), observed=("observed", "mean"),
                                n=("observed", "size")).reset_index()
    out["bin_center"] = (edges[out["bin"]] + edges[out["bin"] + 1]) / 2
    return out[["bin_center", "predicted", "observed", "n"]].round(4)


def calibration_figure(simulator: SimulatorOracle, dataset: RecDataset, holdout: int = 2, n_bins: int = 8):
    """Plotly figure: mean observed vs mean predicted held-out rating per bin (marker size = count), and
    the diagonal a calibrated simulator would follow."""
    import plotly.graph_objects as go

    cal = calibration_frame(simulator, dataset, holdout, n_bins)
    size = 8 + 22 * np.sqrt(cal["n"] / cal["n"].max())
    fig = go.Figure([
        go.Scatter(x=[1, 5], y=[1, 5], mode="lines", name="calibrated", line={"dash": "dash", "color": "grey"}),
        go.Scatter(x=cal["predicted"], y=cal["observed"], mode="markers+lines", name="simulator",
                   marker={"size": size}, text=[f"n={n}" for n in cal["n"]]),
    ])
    fig.update_layout(title=f"Simulator calibration on held-out ratings ({dataset.name})",
                      xaxis_title="mean predicted rating", yaxis_title="mean observed rating",
                      xaxis_range=[0.8, 5.2], yaxis_range=[0.8, 5.2], width=520, height=460)
    return fig


def save_simulator_report(simulator: SimulatorOracle, dataset: RecDataset, folder: str | Path,
                          holdout: int = 2) -> pd.DataFrame:
    """Save the training simulator (:meth:`SimulatorOracle.save`), its :func:`heldout_table` as
    ``heldout.json`` and its :func:`calibration_figure` as ``calibration.html`` (plotly.js beside it, works
    offline) into ``folder``; return the table."""
    table = heldout_table(simulator, dataset, holdout)
    simulator.save(folder)
    write_json(Path(folder) / "heldout.json", table.to_dict("records"))
    with atomic_path(Path(folder) / "calibration.html") as tmp:
        calibration_figure(simulator, dataset, holdout).write_html(tmp, include_plotlyjs="directory", full_html=True)
    return table
