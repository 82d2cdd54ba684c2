"""Evaluation of a generative recommender: task-A prompts, constrained beam search, Recall/NDCG.

For every user of a split (none dropped), the prompt is :func:`align3gr_kit.prompts.sequential_prompt`
over the user's history (and user SCID when injected), encoded like the SFT prompts
(:mod:`align3gr_kit.model.encoding`); prompts are batched by length, left-padded and decoded with
:func:`align3gr_kit.decoding.constrained_beam_search` (width ``decode.beam_width``), which can only
produce catalogue items. The ranked lists are scored with :mod:`align3gr_kit.metrics`.

``invalid`` counts slots of the top-K lists that are not a distinct catalogue item (an id outside
the catalogue, a repeat within a user's list, or an empty slot while the catalogue has at least K
items); constrained decoding must keep it at 0.

Each stage that evaluates models also keeps every user's 0-based target rank per split
(``target_ranks.json``, :func:`write_target_ranks`), so that two models of one run can be compared
user by user (:func:`align3gr_kit.metrics.paired_hit_difference`) without a second beam search, and
every user's top-K items themselves (``recommendations.json``, :func:`write_recommendations`), so that
a finished run shows what each model recommended to whom (the curriculum explorer,
:mod:`align3gr_kit.dpo.explorer`) without loading a model.

With a judge (a feedback oracle, :func:`align3gr_kit.feedback.evaluation_oracle`), :func:`liked_share`
grades the same top-K lists: what users like in them (:func:`evaluate_liked` recommends and grades).

Imports of the kit: ``config``, ``distributed``, ``metrics``, ``scid``, ``utils``, ``prompts.templates``,
``decoding``, ``model`` and ``stages.contract`` (:func:`run_evaluate`); never ``dpo`` or ``feedback``,
which call down into this module (an oracle is passed in, never imported).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from align3gr_kit.config import DecodeConfig, RunConfig
from align3gr_kit.distributed import sharded_map
from align3gr_kit.metrics import metrics_from_ranks, target_ranks
from align3gr_kit.scid import ScidTable
from align3gr_kit.utils import read_json, write_json

#: ``<stage folder>/target_ranks.json``: ``{model label: {split: [0-based target rank per user, -1 = not
#: in the top K]}}``, users in the order :func:`evaluate` scored them.
TARGET_RANKS = "target_ranks.json"


def write_target_ranks(folder, ranks: dict[str, dict[str, list[int]]]) -> None:
    """Write the per-user target ranks of a stage's models (atomic)."""
    write_json(Path(folder) / TARGET_RANKS, ranks)


def read_target_ranks(folder) -> dict[str, dict[str, list[int]]]:
    """The per-user target ranks a stage folder kept, ``{}`` when it kept none (runs before they were kept)."""
    path = Path(folder) / TARGET_RANKS
    return read_json(path) if path.exists() else {}


#: ``<stage folder>/recommendations.json``: ``{model label: {split: {"user_id": [n], "items": [n][K]}}}``,
#: every evaluated user's top-K item ids (K = ``max(decode.topk)``, best first, ``-1`` = empty slot), users
#: in the order :func:`evaluate` scored them (the order of ``target_ranks.json``).
RECOMMENDATIONS = "recommendations.json"


def write_recommendations(folder, recommendations: dict[str, dict[str, dict[str, list]]]) -> None:
    """Write the per-user top-K lists of a stage's models (atomic; format: :data:`RECOMMENDATIONS`)."""
    write_json(Path(folder) / RECOMMENDATIONS, recommendations)


def read_recommendations(folder) -> dict[str, dict[str, dict[str, list]]]:
    """The per-user top-K lists a stage folder kept (format: :data:`RECOMMENDATIONS`), ``{}`` when it kept
    none (runs before they were kept)."""
    path = Path(folder) / RECOMMENDATIONS
    return read_json(path) if path.exists() else {}


def item_token_ids(tokenizer, item_scids: ScidTable) -> torch.Tensor:
    """``[n_items, L]`` vocabulary ids of every item's SCID tokens (raises if a token is unknown)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in item_scids.vocabulary() if t not in vocab]
    if missing:
        raise ValueError(f"{len(missing)} item SCID tokens (e.g. {missing[:3]}) are not in the tokenizer; "
                         "the model must be built with these SCIDs (re-run stages 03/04 after 01_tokenize)")
    ids = [[vocab[t] for t in item_scids.tokens(i)] for i in range(item_scids.n)]
    return torch.as_tensor(ids, dtype=torch.long)


def evaluation_prompts(samples: pd.DataFrame, item_scids: ScidTable, user_scids: ScidTable | None,
                       user_scid_in_prompt: bool) -> list[str]:
    """The task-A prompt of every row of ``samples`` (columns ``user_id``, ``history``)."""
    from align3gr_kit.prompts.templates import sequential_prompt

    item_str = [item_scids.string(i) for i in range(item_scids.n)]
    use_user = user_scid_in_prompt and user_scids is not None
    return [
        sequential_prompt(user_scids.string(int(u)) if use_user else None, [item_str[int(i)] for i in hist])
        for u, hist in zip(samples.user_id.to_numpy(), samples.history)
    ]


def recommend(
    model,
    tokenizer,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    samples: pd.DataFrame,
    decode: DecodeConfig,
    user_scid_in_prompt: bool,
    max_length: int | None = None,
    k: int | None = None,
    progress: bool = True,
    precision: str = "auto",
    sharded: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items for every row of ``samples`` by constrained beam search.

    Under a distributed launch the processes share the work (:func:`align3gr_kit.distributed.sharded_map`):
    the length-sorted batches are cut as in one process, batch ``j`` is decoded by rank ``j % world``, and
    the results are gathered on every rank, so each batch is the same tensor as in one process and the
    result is the one-process result. Every process of the launch must call it together.

    Args:
        model: causal LM with the SCID tokens (PEFT models work too).
        tokenizer: its tokenizer.
        item_scids / user_scids: the SCID tables the model was trained with.
        samples: ``user_id``, ``history`` (item ids, oldest first) per row.
        decode: ``beam_width``, ``batch_size``.
        user_scid_in_prompt: put the user SCID into the prompt (as in SFT).
        max_length: the SFT ``max_length``: prompts are cut from the left to leave room for an SCID.
        k: list length; ``None`` = ``beam_width``.
        progress: tqdm over batches.
        precision: ``model.dtype``, the autocast dtype of the forward passes
            (:func:`align3gr_kit.model.precision.autocast_dtype`); ``float32`` for exact comparisons.
        sharded: False: this process decodes every row alone, even inside a launch.
    Returns:
        ``(items [n, k] int64 with -1 padding, scores [n, k] float32 log-probabilities)`` in row order.
    """
    from align3gr_kit.decoding import ItemTrie, constrained_beam_search
    from align3gr_kit.model.encoding import encode_prompts, left_pad

    k = k or decode.beam_width
    prompts = evaluation_prompts(samples, item_scids, user_scids, user_scid_in_prompt)
    budget = None if max_length is None else max_length - item_scids.levels - 1
    ids = encode_prompts(tokenizer, prompts, budget)
    trie = ItemTrie(item_token_ids(tokenizer, item_scids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = np.full((len(ids), k), -1, dtype=np.int64)
    scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    # Batches of similar lengths waste less compute on padding; results go back to row order.
    order = np.argsort([len(x) for x in ids], kind="stable")

    def decode_rows(rows: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for start in tqdm(range(0, len(rows), decode.batch_size), desc="beam search", disable=not progress):
            batch = rows[start:start + decode.batch_size]
            input_ids, mask = left_pad([ids[r] for r in batch], pad)
            res = constrained_beam_search(model, input_ids, mask, trie, beam_width=decode.beam_width, topk=k,
                                          precision=precision)
            out.extend(zip(res.items.cpu().numpy(), res.scores.float().cpu().numpy()))
        return out

    for row, (got, got_scores) in zip(order, sharded_map(order.tolist(), decode.batch_size, decode_rows, sharded)):
        items[row, : len(got)] = got
        scores[row, : len(got)] = got_scores
    return items, scores


def count_invalid(items: np.ndarray, n_items: int, k: int) -> int:
    """Slots of the top-``k`` lists that are not a distinct catalogue item (see the module docstring)."""
    top = items[:, :k]
    bad = int(((top >= n_items) | (top < -1)).sum())
    for row in top:
        real = row[row >= 0]
        bad += len(real) - len(np.unique(real))
    if n_items >= k:
        bad += int((top == -1).sum())
    return bad


def liked_share(user_ids: Sequence[int], items: np.ndarray, oracle, k: int = 10) -> dict[str, float]:
    """What users like in their top-``k`` recommendations, by ``oracle``.

    Args:
        user_ids: ``[n]`` the user of each list.
        items: ``[n, >=k]`` ranked recommended item ids per user (``-1`` = empty slot, skipped), e.g. the
            first output of :func:`recommend`.
        oracle: the judge, a :class:`~align3gr_kit.feedback.FeedbackOracle` (``levels(users, items)`` and
            ``ratings(users, items)``; :func:`align3gr_kit.feedback.evaluation_oracle`).
        k: list length scored.
    Returns:
        ``liked_share@k``: share of graded slots graded ``liked``; ``mean_rating@k``: mean of the oracle's
        expected ratings over the slots it rates (NaN if it rates none); ``graded_share@k``: share of
        filled slots the oracle could grade (1.0 for the simulator and the ground truth); ``users``.
    """
    items = np.asarray(items, dtype=np.int64)[:, :k]
    users = np.repeat(np.asarray(user_ids, dtype=np.int64), items.shape[1])
    flat = items.ravel()
    filled = flat >= 0
    users, flat = users[filled], flat[filled]
    levels = oracle.levels(users.tolist(), flat.tolist())
    graded = [lv for lv in levels if lv is not None]
    ratings = oracle.ratings(users.tolist(), flat.tolist())
    ratings = ratings[~np.isnan(ratings)]
    return {
        f"liked_share@{k}": round(sum(lv == "liked" for lv in graded) / len(graded), 4) if graded else float("nan"),
        f"mean_rating@{k}": round(float(ratings.mean()), 4) if len(ratings) else float("nan"),
        f"graded_share@{k}": round(len(graded) / len(flat), 4) if len(flat) else float("nan"),
        "users": int(len(items)),
    }


def evaluate(
    model,
    tokenizer,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    samples: pd.DataFrame,
    decode: DecodeConfig,
    user_scid_in_prompt: bool,
    max_length: int | None = None,
    progress: bool = True,
    judge=None,
    precision: str = "auto",
    keep_ranks: bool = False,
    sharded: bool = True,
) -> dict[str, Any]:
    """Recall@K / NDCG@K of the model on a split's samples (one held-out target per user), and with a
    ``judge`` (a :class:`~align3gr_kit.feedback.FeedbackOracle`, e.g.
    :func:`align3gr_kit.feedback.evaluation_oracle`) what users like in the same top-K lists.

    Args:
        samples: ``user_id``, ``history``, ``target`` per user (``Split.valid`` / ``Split.test``);
            the first ``decode.max_eval_users`` rows when that is set, else all.
        decode: ``beam_width``, ``topk`` (the K of the metrics), ``batch_size``.
        judge: grades the top-``max(decode.topk)`` lists (no second beam search); None = skip.
        keep_ranks: also return ``target_ranks``, each user's 0-based target rank (-1 = not in the top K),
            and ``recommendations``: ``{"user_id": [n], "items": [n][K]}``, each user's top-K item ids (the
            lists the metrics scored; :func:`write_recommendations` keeps them).
        Other arguments: as :func:`recommend` (under a launch the ranks share the beam search; every rank
        gets the same metrics).

    Returns:
        ``{"recall@5", "recall@10", "ndcg@5", "ndcg@10", "users", "invalid", "seconds"}`` (one key
        per K in ``decode.topk``), plus ``liked_share@K``, ``mean_rating@K``, ``graded_share@K`` with a judge.
    """
    t0 = time.time()
    if decode.max_eval_users:
        samples = samples.iloc[: decode.max_eval_users]
    if len(samples) == 0:
        raise ValueError("evaluate: no users in the split")
    k = max(decode.topk)
    if k > decode.beam_width:
        raise ValueError(f"decode.topk {decode.topk} exceeds decode.beam_width {decode.beam_width}; "
                         "the beam search returns at most beam_width items")
    items, _ = recommend(model, tokenizer, item_scids, user_scids, samples, decode, user_scid_in_prompt,
                         max_length, k=k, progress=progress, precision=precision, sharded=sharded)
    ranks = target_ranks(items, samples.target.to_numpy())
    metrics = metrics_from_ranks(ranks, ks=decode.topk)
    if judge is not None:
        liked = liked_share(samples["user_id"].to_numpy(), items, judge, k=k)
        metrics.update({key: v for key, v in liked.items() if key != "users"})
    out = {**{m: round(v, 6) for m, v in metrics.items()}, "users": int(len(samples)),
           "invalid": count_invalid(items, item_scids.n, k), "seconds": round(time.time() - t0, 2)}
    if keep_ranks:
        out["target_ranks"] = [int(r) for r in ranks]
        out["recommendations"] = {"user_id": [int(u) for u in samples["user_id"]],
                                  "items": items[:, :k].astype(int).tolist()}
    return out


def evaluate_liked(model, tokenizer, item_scids, user_scids, samples, decode, user_scid_in_prompt: bool,
                   oracle, max_length: int | None = None, k: int = 10,
                   progress: bool = True) -> dict[str, float]:
    """:func:`liked_share` of a model's top-``k`` lists for the users of ``samples`` (e.g. ``Split.test``).

    Recommends exactly as :func:`evaluate` does (same prompts, constrained beam search,
    the first ``decode.max_eval_users`` users when set), then grades the lists with ``oracle`` (the judge,
    :func:`align3gr_kit.feedback.evaluation_oracle`). ``k`` is capped at ``decode.beam_width`` (the keys
    say which K was used).
    """
    if decode.max_eval_users:
        samples = samples.iloc[: decode.max_eval_users]
    k = min(k, decode.beam_width)
    items, _ = recommend(model, tokenizer, item_scids, user_scids, samples, decode, user_scid_in_prompt,
                         max_length, k=k, progress=progress)
    return liked_share(samples["user_id"].to_numpy(), items, oracle, k=k)


def run_evaluate(cfg: RunConfig, split_name: str = "test", model_stage: str = "04_sft") -> dict[str, Any]:
    """``python -m align3gr_kit evaluate --config C --split test``: the model a finished stage of the run
    ends with (``04_sft``, ``05_sp_dpo``, ``06_rf_dpo``) on the run's split; returns the metrics (plus
    ``split`` and ``model``)."""
    from align3gr_kit.model.backbone import load_model
    from align3gr_kit.stages.contract import get_stage, read_manifest, stage_dir

    stage = get_stage(model_stage)
    for name in ("00_data", stage.name):
        if read_manifest(cfg, name) is None:
            raise FileNotFoundError(f"{stage_dir(cfg, name)}: stage {name} has not finished for run "
                                    f"{cfg.run_name!r}; run it first")
    folder = stage.load_artifacts(stage_dir(cfg, stage.name)).model_dir
    model, tokenizer, item_scids, user_scids = load_model(folder, cfg.model.dtype, cfg.model.trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    split = get_stage("00_data").load_artifacts(stage_dir(cfg, "00_data")).split
    metrics = evaluate(model, tokenizer, item_scids, user_scids, split.samples(split_name), cfg.decode,
                       cfg.prompts.user_scid_in_prompt, max_length=cfg.sft.max_length)
    return {"split": split_name, "model": str(folder), **metrics}
