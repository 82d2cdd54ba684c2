"""Preference data for progressive DPO: prompts, chosen and rejected responses per stage.

Every example is a dict ``{"prompt", "chosen", "rejected": [...], "user_id", "target", "chosen_item",
"rejected_items": [...], "from_beams"}`` plus stage-specific fields; responses are item SCID
strings, prompts the task-A sequential-prediction prompt (with the user SCID when the run injects it).

SP-DPO (self-play): chosen = the ground-truth next item; rejected = the policy's own constrained-beam
items that differ from it, of the stage's difficulty (see :mod:`align3gr_kit.dpo.negatives`), never one
of the user's own training items; the catalogue fills in only when the beam runs short, and
:func:`sp_preference_stats` counts how often.

RF-DPO (real feedback), as in Align3GR Fig. 2: the policy's constrained-beam items for a training
prompt are "shown" to the user and a :class:`~align3gr_kit.feedback.FeedbackOracle` (``dpo.rf_oracle``: a
simulator fit on training ratings, the generator's ground truth, or logged ratings) grades each one
disliked / neutral / liked.

* chosen (``dpo.rf_chosen``): a shown item the oracle grades liked. ``next_or_best`` (default): the
  logged next item when it is shown and graded liked, else the best-graded liked shown item (highest
  oracle rating, then beam order); ``best``: always the latter; ``next``: the logged next item when
  the oracle grades it liked, shown or not (the kit's earlier rule). Never one of the user's other
  training items (already consumed) and never one of the user's validation/test items: training
  toward a held-out target would raise the very number the evaluation reports (the one asymmetric
  use of the held-out items, conservative by design). A prompt with no such item is skipped.
* rejected: the shown items the oracle grades at the stage's level (easy: disliked; hard: neutral;
  all: either), in beam order, up to N; banned are only the chosen item and the user's own training
  items. Validation and test items are not banned: a held-out item the oracle grades disliked is
  rejected like any other (banning them would protect the test targets from being pushed down).
  A prompt with no rejected response is skipped.
* fallback (``fallback="catalogue"``, off by default): when the beams give fewer than N, the rest are
  catalogue items the oracle grades at that level, drawn with the stage's seeded generator, never the
  chosen item or the user's training items. These were not shown, so they are counted apart:
  ``stats["fallback_share"]`` is the share of rejected responses that came from the fallback
  (``from_beams`` per example counts the shown ones).

Imports of the kit: ``scid``, ``prompts.templates``, ``feedback.oracle`` and ``dpo.negatives``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from align3gr_kit.dpo.negatives import DIFFICULTIES, NegativeSampler
from align3gr_kit.feedback.oracle import FeedbackOracle
from align3gr_kit.scid import ScidTable

PromptFn = Callable[[str | None, list[str]], str]

#: RF-DPO stage -> the oracle levels its rejected responses have (chosen is always ``liked``).
RF_REJECTED_LEVELS = {"easy": ("disliked",), "hard": ("neutral",), "all": ("disliked", "neutral")}


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """A generator fixed by the run seed and the stage name (stable across processes and runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(stage.encode())])


def sample_prompts(train: pd.DataFrame, max_prompts: int, seed: int, stage: str,
                   eligible: np.ndarray | None = None) -> pd.DataFrame:
    """Training samples for one stage, each with ``t`` (the target's index in the training sequence).

    Args:
        train: ``Split.train`` (``user_id``, ``history``, ``target``), in leave-one-out order (per
            user, ``t = 1, 2, ...``).
        max_prompts: how many to draw (seeded, without replacement); 0 = all.
        eligible: optional boolean mask over ``train``'s rows: draw only among these (RF-DPO: the
            samples whose next item is liked, :func:`liked_next_item`), ``t`` still counted over all rows.
    Returns:
        The chosen rows in their original order, with a ``t`` column.
    """
    df = train.reset_index(drop=True).copy()
    df["t"] = df.groupby("user_id", sort=False).cumcount() + 1
    if eligible is not None:
        eligible = np.asarray(eligible, dtype=bool)
        if eligible.shape != (len(df),):
            raise ValueError(f"eligible has shape {eligible.shape}, expected ({len(df)},): one flag per training sample")
        df = df[eligible].reset_index(drop=True)
    if max_prompts and max_prompts < len(df):
        idx = np.sort(stage_rng(seed, stage + "/prompts").choice(len(df), size=max_prompts, replace=False))
        df = df.iloc[idx].reset_index(drop=True)
    return df


def training_items(split) -> dict[int, set[int]]:
    """``user_id -> the user's training items`` (``Split.train_sequences``): what no rejected list holds."""
    return {int(u): {int(i) for i in seq} for u, seq in split.train_sequences.items()}


def default_prompt_fn() -> PromptFn:
    """The kit's task-A prompt (:func:`align3gr_kit.prompts.templates.sequential_prompt`)."""
    from align3gr_kit.prompts.templates import sequential_prompt

    return sequential_prompt


def sequential_prompts(
    samples: pd.DataFrame,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    prompt_fn: PromptFn | None = None,
) -> list[str]:
    """Task-A prompt per sample; the user SCID goes in when ``user_scids`` is given."""
    fn = prompt_fn or default_prompt_fn()
    return [
        fn(user_scids.string(int(u)) if user_scids is not None else None, [item_scids.string(int(i)) for i in hist])
        for u, hist in zip(samples["user_id"], samples["history"])
    ]


#: ``[(sample row, item ids), ...] -> [[n] log-probabilities per query]`` of those items' SCIDs after
#: that row's prompt under the policy, all queries in one call (shared forward passes).
RankFn = Callable[[list[tuple[int, list[int]]]], list[np.ndarray]]


def build_sp_preferences(
    samples: pd.DataFrame,
    prompts: Sequence[str],
    item_scids: ScidTable,
    sampler: NegativeSampler,
    difficulty: str,
    n_rejected: int,
    seed: int,
    candidates: np.ndarray | None,
    rank_fn: RankFn | None = None,
    rank_pool: int = 0,
    banned: Mapping[int, Collection[int]] | None = None,
) -> list[dict]:
    """SP-DPO examples of one stage.

    Negatives are, in this order: the beam's items of the stage's difficulty (beam order); when they
    are fewer than ``n_rejected`` and ``rank_fn`` is given, the catalogue items of that difficulty
    the policy itself scores highest (at most ``rank_pool`` of them scored, drawn with the stage's
    generator when there are more): the items a beam restricted to that difficulty would generate;
    only then uniformly drawn catalogue items of that difficulty (the last resort). Never an item of
    ``banned[user]`` (the user's training items, :func:`training_items`).

    Args:
        samples: the stage's training samples (``user_id``, ``history``, ``target``).
        prompts: one prompt per sample.
        sampler: grades and picks negatives (prefix or similarity difficulty).
        difficulty: ``easy``/``medium``/``hard``, ``all`` (progressive off) or ``random`` (ablation).
        n_rejected: N, rejected responses per prompt (fewer only if the catalogue runs out).
        candidates: ``[n_samples, K]`` the policy's beam items (``-1`` pad); None for ``random``.
        rank_fn: scores every prompt's pool in one call (:data:`RankFn`, e.g.
            :func:`align3gr_kit.dpo.negatives.response_logps_batch`); used for the graded difficulties only.
        rank_pool: how many catalogue items ``rank_fn`` scores at most per prompt (0: no ranking).
        banned: ``user -> items`` never rejected (besides the chosen one); None = none.
    Returns:
        One example per sample with a non-empty rejected list; extra fields ``overlaps`` (shared
        semantic SCID levels of each rejected item with the chosen one), ``from_beams`` (from the
        policy's beam) and ``from_ranked`` (the policy's highest-scored items of the difficulty).
    """
    rng = stage_rng(seed, difficulty + "/negatives")
    pool_rng = stage_rng(seed, difficulty + "/rank-pool")
    banned = banned or {}
    rows = list(zip(samples["user_id"], samples["target"]))
    # first every prompt's pool of catalogue items to rank, then one scoring call for all of them
    queries: list[tuple[int, list[int]]] = []
    if rank_fn is not None and rank_pool > 0 and candidates is not None and difficulty in DIFFICULTIES:
        for row, (u, target) in enumerate(rows):
            ok = sampler.grades(int(target)) == DIFFICULTIES.index(difficulty)
            ok[list(banned.get(int(u), ()))] = False
            in_beam = [int(c) for c in candidates[row] if c >= 0 and ok[int(c)]]
            if len(set(in_beam)) >= n_rejected:
                continue
            pool = np.setdiff1d(np.flatnonzero(ok), in_beam)
            if len(pool) > rank_pool:
                pool = np.sort(pool_rng.choice(pool, size=rank_pool, replace=False))
            if len(pool):
                queries.append((row, pool.tolist()))
    scores = rank_fn(queries) if queries else []
    ranked_by_row = {row: np.asarray(pool)[np.argsort(-np.asarray(sc), kind="stable")].tolist()
                     for (row, pool), sc in zip(queries, scores)}
    out = []
    for row, (u, target) in enumerate(rows):
        cand = None if candidates is None else candidates[row]
        ranked = ranked_by_row.get(row, [])
        if ranked:
            cand = np.concatenate([np.asarray(cand), np.asarray(ranked, dtype=np.int64)])
        rejected, from_policy = sampler.pick(int(target), cand, difficulty, n_rejected, rng,
                                             exclude=banned.get(int(u), ()))
        if not rejected:
            continue
        from_ranked = len(set(rejected[:from_policy]) & set(ranked))
        from_beams = from_policy - from_ranked
        overlaps = sampler.overlap(rejected, int(target))  # semantic levels only
        out.append({
            "prompt": prompts[row],
            "chosen": item_scids.string(int(target)),
            "rejected": [item_scids.string(r) for r in rejected],
            "user_id": int(u),
            "target": int(target),
            "chosen_item": int(target),
            "rejected_items": rejected,
            "from_beams": int(from_beams),
            "from_ranked": int(from_ranked),
            "overlaps": overlaps,
        })
    return out


def sp_preference_stats(examples: Sequence[dict], n_prompts: int) -> dict[str, float]:
    """How one SP-DPO stage's negatives were found: ``prompts``, ``examples``, ``rejected``,
    ``from_beams`` (the policy's own beam), ``from_ranked`` (the policy's highest-scored items of the
    difficulty), ``from_catalogue`` (the uniform fill, the last resort), ``from_beams_share``,
    ``from_policy_share`` (beam + ranked), and ``overlap/<k>``: rejected responses sharing ``k``
    semantic levels with the chosen one."""
    n_rej = sum(len(e["rejected"]) for e in examples)
    n_beam = sum(int(e["from_beams"]) for e in examples)
    n_ranked = sum(int(e.get("from_ranked", 0)) for e in examples)
    overlaps = pd.Series([o for e in examples for o in e.get("overlaps", [])], dtype="int64").value_counts()
    return {"prompts": int(n_prompts), "examples": len(examples), "rejected": n_rej, "from_beams": n_beam,
            "from_ranked": n_ranked, "from_catalogue": n_rej - n_beam - n_ranked,
            "from_beams_share": round(n_beam / n_rej, 4) if n_rej else 0.0,
            "from_policy_share": round((n_beam + n_ranked) / n_rej, 4) if n_rej else 0.0,
            **{f"overlap/{int(k)}": int(v) for k, v in sorted(overlaps.items())}}


class TooFewPreferences(ValueError):
    """A stage's preference data is too small to train on (the message gives the counts and the fix)."""


@dataclass
class RFPreferences:
    """One RF-DPO stage's preference data.

    Attributes:
        examples: the training examples (see the module docstring), with ``rejected_levels`` and
            ``from_beams`` (how many of the rejected responses were shown items, the first ones).
        stats: ``prompts``, ``skipped_no_chosen`` (no shown item the rule may choose was graded liked),
            ``skipped_no_rejected``, ``examples``, ``chosen_next`` (examples whose chosen item is the logged
            next item), ``rejected``, ``from_beams``, ``from_fallback``, ``from_beams_share``,
            ``fallback_share``, and ``shown/<level>`` (how the oracle graded the distinct shown items other
            than the chosen one and the user's training items; ``shown/unknown``: not graded).
        shown: ``(user, item)`` of every distinct shown item graded (the pairs the training oracle and
            the judge are compared on, :func:`align3gr_kit.feedback.agreement`).
    """

    examples: list[dict]
    stats: dict[str, float]
    shown: list[tuple[int, int]]


def held_out_items(split) -> dict[int, set[int]]:
    """``user_id -> {validation target, test target}`` of a :class:`~align3gr_kit.data.split.Split`
    (never an RF-DPO chosen item; rejected lists do not ban them)."""
    out: dict[int, set[int]] = {}
    for frame in (split.valid, split.test):
        for u, t in zip(frame["user_id"], frame["target"]):
            out.setdefault(int(u), set()).add(int(t))
    return out


#: Values of ``dpo.rf_chosen`` (see the module docstring).
RF_CHOSEN = ("next_or_best", "best", "next")


def rf_chosen_item(user: int, target: int, beam: list[int], levels: list[str | None], ratings: np.ndarray,
                   rule: str, oracle: FeedbackOracle, not_chosen: Collection[int]) -> int | None:
    """The chosen item of one RF-DPO prompt (``dpo.rf_chosen`` ``rule``), or None.

    Args:
        beam: the distinct shown items, best first; ``levels`` / ``ratings``: the oracle's grade and
            rating of each (NaN where it has no rating).
        not_chosen: items never chosen (the user's held-out items and other training items).
    """
    if rule == "next":
        return target if target not in not_chosen and oracle.level(user, target) == "liked" else None
    if rule == "next_or_best" and target in beam and levels[beam.index(target)] == "liked":
        return target
    liked = [k for k, (c, lv) in enumerate(zip(beam, levels)) if lv == "liked" and c not in not_chosen]
    if not liked:
        return None
    # highest rating first (NaN: unrated, last), then beam order
    best = min(liked, key=lambda k: (-ratings[k] if ratings[k] == ratings[k] else np.inf, k))
    return beam[best]


def build_rf_preferences(
    samples: pd.DataFrame,
    prompts: Sequence[str],
    item_scids: ScidTable,
    oracle: FeedbackOracle,
    stage: str,
    n_rejected: int,
    seed: int,
    candidates: np.ndarray,
    train_items: Mapping[int, Collection[int]],
    held_out: Mapping[int, Collection[int]],
    chosen_rule: str = "next_or_best",
    fallback: str = "none",
    min_examples: int = 1,
) -> RFPreferences:
    """RF-DPO examples of one stage (see the module docstring for the chosen/rejected rule).

    Args:
        samples: training samples (``user_id``, ``history``, ``target``), e.g. from :func:`sample_prompts`.
        prompts: one prompt per sample.
        oracle: grades the shown items (``dpo.rf_oracle``).
        stage: ``easy`` (liked vs disliked), ``hard`` (liked vs neutral) or ``all`` (either).
        candidates: ``[n_samples, K]`` the policy's beam items (the recommendations shown; ``-1`` pad).
        train_items: ``user -> training items`` (:func:`training_items`): never rejected, never chosen
            (but the prompt's own next item).
        held_out: ``user -> validation/test items`` (:func:`held_out_items`): never chosen.
        chosen_rule: ``dpo.rf_chosen`` (:data:`RF_CHOSEN`).
        fallback: ``none`` (only shown items) or ``catalogue`` (see the module docstring).
        min_examples: fewer examples than this raise :class:`TooFewPreferences` instead of training on them.
    Returns:
        :class:`RFPreferences` (examples, the stage's statistics, the graded shown pairs).
    Raises:
        TooFewPreferences: fewer than ``min_examples`` examples.
    """
    if stage not in RF_REJECTED_LEVELS:
        raise ValueError(f"unknown RF-DPO stage {stage!r}; use one of {tuple(RF_REJECTED_LEVELS)}")
    if fallback not in ("none", "catalogue"):
        raise ValueError(f"fallback must be 'none' or 'catalogue', got {fallback!r}")
    if chosen_rule not in RF_CHOSEN:
        raise ValueError(f"dpo.rf_chosen must be one of {RF_CHOSEN}, got {chosen_rule!r}")
    wanted = RF_REJECTED_LEVELS[stage]
    rng = stage_rng(seed, "rf/" + stage + "/negatives")
    catalogue = np.arange(item_scids.n)
    shown = dict.fromkeys(("disliked", "neutral", "liked", "unknown"), 0)
    stats = {"prompts": len(samples), "skipped_no_chosen": 0, "skipped_no_rejected": 0, "chosen_next": 0}
    graded: dict[tuple[int, int], None] = {}
    out = []
    for row, (u, target) in enumerate(zip(samples["user_id"], samples["target"])):
        u, target = int(u), int(target)
        consumed = set(train_items.get(u, ()))
        beam = list(dict.fromkeys(int(c) for c in candidates[row] if c >= 0))
        levels = oracle.levels([u] * len(beam), beam)
        ratings = oracle.ratings([u] * len(beam), beam) if beam else np.zeros(0)
        graded.update(((u, c), None) for c, lv in zip(beam, levels) if lv is not None)
        chosen = rf_chosen_item(u, target, beam, levels, ratings, chosen_rule, oracle,
                                (consumed - {target}) | set(held_out.get(u, ())))
        if chosen is None:
            stats["skipped_no_chosen"] += 1
            continue
        banned = consumed | {chosen}
        kept = [(c, lv) for c, lv in zip(beam, levels) if c not in banned]
        for _, lv in kept:
            shown[lv or "unknown"] += 1
        rejected = [(c, lv) for c, lv in kept if lv in wanted][:n_rejected]
        from_beams = len(rejected)
        if fallback == "catalogue" and len(rejected) < n_rejected:
            keep = np.ones(len(catalogue), dtype=bool)
            keep[list(banned | {c for c, _ in rejected})] = False
            pool = catalogue[keep]
            pool_levels = oracle.levels([u] * len(pool), pool.tolist())
            pool = [(int(i), lv) for i, lv in zip(pool, pool_levels) if lv in wanted]
            order = rng.permutation(len(pool))[: n_rejected - len(rejected)]
            rejected.extend(pool[k] for k in order)
        if not rejected:
            stats["skipped_no_rejected"] += 1
            continue
        stats["chosen_next"] += int(chosen == target)
        out.append({
            "prompt": prompts[row],
            "chosen": item_scids.string(chosen),
            "rejected": [item_scids.string(c) for c, _ in rejected],
            "user_id": u,
            "target": target,
            "chosen_item": chosen,
            "rejected_items": [c for c, _ in rejected],
            "from_beams": from_beams,
            "rejected_levels": [lv for _, lv in rejected],
        })
    n_rej = sum(len(e["rejected"]) for e in out)
    n_beam = sum(e["from_beams"] for e in out)
    stats.update({
        "examples": len(out), "rejected": n_rej, "from_beams": n_beam, "from_fallback": n_rej - n_beam,
        "from_beams_share": round(n_beam / n_rej, 4) if n_rej else 0.0,
        "fallback_share": round((n_rej - n_beam) / n_rej, 4) if n_rej else 0.0,
        **{f"shown/{k}": v for k, v in shown.items()},
    })
    if len(out) < min_examples:
        raise TooFewPreferences(
            f"RF-DPO stage {stage!r}: {len(out)} preference example(s), fewer than the {min_examples} needed "
            f"({stats['prompts']} prompts; {stats['skipped_no_chosen']} skipped because no shown item the rule "
            f"dpo.rf_chosen={chosen_rule!r} may choose was graded liked, {stats['skipped_no_rejected']} because no "
            f"shown item was graded {'/'.join(wanted)}; shown items graded {shown}); raise dpo.max_prompts or the "
            "beam width, or drop the stage from dpo.rf_stages"
        )
    return RFPreferences(out, stats, list(graded))
