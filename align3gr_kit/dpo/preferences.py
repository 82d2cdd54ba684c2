"""Preference data for progressive DPO: prompts, chosen and rejected responses per stage.

Every example is a dict ``{"prompt", "chosen", "rejected": [...], "user_id", "target", "chosen_item",
"rejected_items": [...], "from_beams"}`` plus stage-specific fields; responses are item SCID
strings, prompts the task-A sequential-prediction prompt (with the user SCID when the run injects it).

SP-DPO (self-play): chosen = the ground-truth next item; rejected = the policy's own constrained-beam
items that differ from it, of the stage's difficulty (see :mod:`align3gr_kit.dpo.negatives`); the
catalogue fills in only when the beam runs short, and :func:`sp_preference_stats` counts how often.

RF-DPO (real feedback), as in Align3GR: the policy's constrained-beam items for a training prompt
are "shown" to the user and a :class:`~align3gr_kit.feedback.FeedbackOracle` (``dpo.rf_oracle``: a
simulator fit on training ratings, the generator's ground truth, or logged ratings) grades each one
disliked / neutral / liked.

* chosen: the prompt's ground-truth next item, only when its OBSERVED (logged training) rating is
  liked. Prompts whose next item is not liked are skipped: no later item stands in, so the chosen
  response is never the user's future consumption. (``run_dpo`` draws a stage's prompts among the
  liked ones, :func:`liked_next_item`, so that none of its budget goes to prompts skipped here.)
* rejected: the shown items the oracle grades at the stage's level (easy: disliked; hard: neutral;
  all: either), in beam order, up to N; never the chosen item, never one of the user's
  validation/test items. A prompt with no rejected response is skipped.
* fallback (``fallback="catalogue"``, off by default): when the beams give fewer than N, the rest are
  catalogue items the oracle grades at that level, drawn with the stage's seeded generator, never
  the user's logged training items, the prompt's history, held-out items or the chosen item. These
  were not shown, so they are counted apart: ``stats["fallback_share"]`` is the share of rejected
  responses that came from the fallback (``from_beams`` per example counts the shown ones).

Imports of the kit: ``scid``, ``prompts.templates``, ``feedback.oracle`` and ``dpo.negatives``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

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


def liked_next_item(train: pd.DataFrame, observed: FeedbackOracle) -> np.ndarray:
    """One flag per training sample: is its next item's observed (logged training) rating liked?

    RF-DPO's chosen response is the next item only when it is liked, so only these samples can give
    an example: drawing the stage's ``dpo.max_prompts`` among them (instead of skipping the others
    after the beam search) spends the prompt budget and the beams on usable prompts.
    """
    levels = observed.levels([int(u) for u in train["user_id"]], [int(t) for t in train["target"]])
    return np.array([lv == "liked" for lv in levels], dtype=bool)


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


def build_sp_preferences(
    samples: pd.DataFrame,
    prompts: Sequence[str],
    item_scids: ScidTable,
    sampler: NegativeSampler,
    difficulty: str,
    n_rejected: int,
    seed: int,
    candidates: np.ndarray | None,
    rank_fn: Callable[[int, list[int]], np.ndarray] | None = None,
    rank_pool: int = 0,
) -> list[dict]:
    """SP-DPO examples of one stage.

    Negatives are, in this order: the beam's items of the stage's difficulty (beam order); when they
    are fewer than ``n_rejected`` and ``rank_fn`` is given, the catalogue items of that difficulty
    the policy itself scores highest (at most ``rank_pool`` of them scored, drawn with the stage's
    generator when there are more): the items a beam restricted to that difficulty would generate;
    only then uniformly drawn catalogue items of that difficulty (the last resort).

    Args:
        samples: the stage's training samples (``user_id``, ``history``, ``target``).
        prompts: one prompt per sample.
        sampler: grades and picks negatives (prefix or similarity difficulty).
        difficulty: ``easy``/``medium``/``hard``, ``all`` (progressive off) or ``random`` (ablation).
        n_rejected: N, rejected responses per prompt (fewer only if the catalogue runs out).
        candidates: ``[n_samples, K]`` the policy's beam items (``-1`` pad); None for ``random``.
        rank_fn: ``(sample row, item ids) -> [n] log-probabilities`` of those items' SCIDs under the
            policy for that row's prompt (:func:`align3gr_kit.dpo.negatives.response_logps`); used
            for the graded difficulties only.
        rank_pool: how many catalogue items ``rank_fn`` scores at most per prompt (0: no ranking).
    Returns:
        One example per sample with a non-empty rejected list; extra fields ``overlaps`` (shared
        semantic SCID levels of each rejected item with the chosen one), ``from_beams`` (from the
        policy's beam) and ``from_ranked`` (the policy's highest-scored items of the difficulty).
    """
    rng = stage_rng(seed, difficulty + "/negatives")
    out = []
    for row, (u, target) in enumerate(zip(samples["user_id"], samples["target"])):
        cand = None if candidates is None else candidates[row]
        ranked: list[int] = []
        if rank_fn is not None and rank_pool > 0 and cand is not None and difficulty in DIFFICULTIES:
            ok = sampler.grades(int(target)) == DIFFICULTIES.index(difficulty)
            in_beam = [int(c) for c in cand if c >= 0 and ok[int(c)]]
            if len(set(in_beam)) < n_rejected:
                pool = np.setdiff1d(np.flatnonzero(ok), in_beam)
                if len(pool) > rank_pool:
                    pool = np.sort(rng.choice(pool, size=rank_pool, replace=False))
                if len(pool):
                    scores = np.asarray(rank_fn(row, pool.tolist()))
                    ranked = pool[np.argsort(-scores, kind="stable")].tolist()
                cand = np.concatenate([np.asarray(cand), np.asarray(ranked, dtype=np.int64)])
        rejected, from_policy = sampler.pick(int(target), cand, difficulty, n_rejected, rng)
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
        stats: ``prompts``, ``skipped_not_liked`` (next item's observed rating not liked),
            ``skipped_no_rejected``, ``examples``, ``rejected``, ``from_beams``, ``from_fallback``,
            ``from_beams_share``, ``fallback_share``, and ``shown/<level>`` (how the oracle graded the
            distinct shown items other than the chosen and held-out ones; ``shown/unknown``: not graded).
    """

    examples: list[dict]
    stats: dict[str, float]


def held_out_items(split) -> dict[int, set[int]]:
    """``user_id -> {validation target, test target}`` of a :class:`~align3gr_kit.data.split.Split`."""
    out: dict[int, set[int]] = {}
    for frame in (split.valid, split.test):
        for u, t in zip(frame["user_id"], frame["target"]):
            out.setdefault(int(u), set()).add(int(t))
    return out


def build_rf_preferences(
    samples: pd.DataFrame,
    prompts: Sequence[str],
    item_scids: ScidTable,
    oracle: FeedbackOracle,
    stage: str,
    n_rejected: int,
    seed: int,
    candidates: np.ndarray,
    observed: FeedbackOracle,
    held_out: dict[int, set[int]],
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
        observed: the logged training ratings (a :class:`~align3gr_kit.feedback.RatingsOracle`): decides
            whether the next item was liked, and which items the user consumed (kept out of the fallback).
        held_out: ``user -> validation/test items`` (:func:`held_out_items`), never rejected.
        fallback: ``none`` (only shown items) or ``catalogue`` (see the module docstring).
        min_examples: fewer examples than this raise :class:`TooFewPreferences` instead of training on them.
    Returns:
        :class:`RFPreferences` (examples and the stage's statistics).
    Raises:
        TooFewPreferences: fewer than ``min_examples`` examples.
    """
    if stage not in RF_REJECTED_LEVELS:
        raise ValueError(f"unknown RF-DPO stage {stage!r}; use one of {tuple(RF_REJECTED_LEVELS)}")
    if fallback not in ("none", "catalogue"):
        raise ValueError(f"fallback must be 'none' or 'catalogue', got {fallback!r}")
    wanted = RF_REJECTED_LEVELS[stage]
    rng = stage_rng(seed, "rf/" + stage + "/negatives")
    catalogue = np.arange(item_scids.n)
    shown = dict.fromkeys(("disliked", "neutral", "liked", "unknown"), 0)
    stats = {"prompts": len(samples), "skipped_not_liked": 0, "skipped_no_rejected": 0}
    out = []
    for row, (u, target, hist) in enumerate(zip(samples["user_id"], samples["target"], samples["history"])):
        u, chosen = int(u), int(target)
        if observed.level(u, chosen) != "liked":
            stats["skipped_not_liked"] += 1
            continue
        banned = held_out.get(u, set()) | {chosen}
        beam = list(dict.fromkeys(int(c) for c in candidates[row] if c >= 0 and int(c) not in banned))
        levels = oracle.levels([u] * len(beam), beam)
        for lv in levels:
            shown[lv or "unknown"] += 1
        rejected = [(c, lv) for c, lv in zip(beam, levels) if lv in wanted][:n_rejected]
        from_beams = len(rejected)
        if fallback == "catalogue" and len(rejected) < n_rejected:
            consumed = ~np.isnan(observed.ratings([u] * len(catalogue), catalogue))
            keep = ~consumed
            keep[list(banned | {c for c, _ in rejected} | {int(i) for i in hist})] = False
            pool = catalogue[keep]
            pool_levels = oracle.levels([u] * len(pool), pool.tolist())
            pool = [(int(i), lv) for i, lv in zip(pool, pool_levels) if lv in wanted]
            order = rng.permutation(len(pool))[: n_rejected - len(rejected)]
            rejected.extend(pool[k] for k in order)
        if not rejected:
            stats["skipped_no_rejected"] += 1
            continue
        out.append({
            "prompt": prompts[row],
            "chosen": item_scids.string(chosen),
            "rejected": [item_scids.string(c) for c, _ in rejected],
            "user_id": u,
            "target": chosen,
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
            f"({stats['prompts']} prompts; {stats['skipped_not_liked']} skipped because the next item's logged rating "
            f"is not liked, {stats['skipped_no_rejected']} because no shown item was graded {'/'.join(wanted)}; "
            f"shown items graded {shown}); raise dpo.max_prompts or the beam width, or drop the stage from dpo.rf_stages"
        )
    return RFPreferences(out, stats)
