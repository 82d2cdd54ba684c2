"""Preference data for progressive DPO: prompts, chosen and rejected responses per stage.

Every example is a dict ``{"prompt", "chosen", "rejected": [...], "user_id", "target", "chosen_item",
"rejected_items": [...], "from_beams"}`` plus stage-specific fields; responses are item SCID
strings, prompts the task-A sequential-prediction prompt (with the user SCID when the run injects it).

SP-DPO (self-play): chosen = the ground-truth next item; rejected = the policy's own constrained-beam
items that differ from it, of the stage's difficulty (see :mod:`align3gr_kit.dpo.negatives`).

RF-DPO (real feedback): the policy's beam items are "shown" to the user and the
:class:`~align3gr_kit.feedback.FeedbackOracle` says how the user feels about each.

* chosen: the prompt's ground-truth next item when the user liked it; otherwise the user's next
  liked item later in their training sequence (still the user's own consumption, never a
  valid/test item); prompts with neither are skipped. The chosen item is thus always an item the
  user really consumed and liked, the best available stand-in for "the recommendation they wanted".
* rejected: the beam items the oracle judges at the stage's level (easy: disliked; hard: neutral;
  all: either), in beam order. Most beam items are unknown to a ratings oracle (the user never
  rated them), so when the beams give fewer than N the rest come from the oracle's
  ``rated_items`` at that level (the user's own rated training items, in a seeded random order);
  a prompt with no rejected response at all is skipped.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from align3gr_kit.dpo.negatives import NegativeSampler
from align3gr_kit.feedback.oracle import FeedbackOracle
from align3gr_kit.scid import ScidTable

PromptFn = Callable[[str | None, list[str]], str]

#: RF-DPO stage -> the oracle levels its rejected responses have (chosen is always ``liked``).
RF_REJECTED_LEVELS = {"easy": ("disliked",), "hard": ("neutral",), "all": ("disliked", "neutral")}


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """A generator fixed by the run seed and the stage name (stable across processes and runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(stage.encode())])


def sample_prompts(train: pd.DataFrame, max_prompts: int, seed: int, stage: str) -> pd.DataFrame:
    """Training samples for one stage, each with ``t`` (the target's index in the training sequence).

    Args:
        train: ``Split.train`` (``user_id``, ``history``, ``target``), in leave-one-out order (per
            user, ``t = 1, 2, ...``).
        max_prompts: how many to draw (seeded, without replacement); 0 = all.
    Returns:
        The chosen rows in their original order, with a ``t`` column.
    """
    df = train.reset_index(drop=True).copy()
    df["t"] = df.groupby("user_id", sort=False).cumcount() + 1
    if max_prompts and max_prompts < len(df):
        idx = np.sort(stage_rng(seed, stage + "/prompts").choice(len(df), size=max_prompts, replace=False))
        df = df.iloc[idx].reset_index(drop=True)
    return df


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
) -> list[dict]:
    """SP-DPO examples of one stage.

    Args:
        samples: the stage's training samples (``user_id``, ``history``, ``target``).
        prompts: one prompt per sample.
        sampler: grades and picks negatives (prefix or similarity difficulty).
        difficulty: ``easy``/``medium``/``hard``, ``all`` (progressive off) or ``random`` (ablation).
        n_rejected: N, rejected responses per prompt (fewer only if the catalogue runs out).
        candidates: ``[n_samples, K]`` the policy's beam items (``-1`` pad); None for ``random``.
    Returns:
        One example per sample with a non-empty rejected list; extra fields ``overlaps`` (shared SCID
        levels of each rejected item with the chosen one) and ``from_beams``.
    """
    rng = stage_rng(seed, difficulty + "/negatives")
    codes = item_scids.codes
    out = []
    for row, (u, target) in enumerate(zip(samples["user_id"], samples["target"])):
        cand = None if candidates is None else candidates[row]
        rejected, from_beams = sampler.pick(int(target), cand, difficulty, n_rejected, rng)
        if not rejected:
            continue
        overlaps = [int(np.cumprod(codes[r] == codes[target]).sum()) for r in rejected]
        out.append({
            "prompt": prompts[row],
            "chosen": item_scids.string(int(target)),
            "rejected": [item_scids.string(r) for r in rejected],
            "user_id": int(u),
            "target": int(target),
            "chosen_item": int(target),
            "rejected_items": rejected,
            "from_beams": int(from_beams),
            "overlaps": overlaps,
        })
    return out


def rf_chosen(oracle: FeedbackOracle, user_id: int, target: int, later_items: Sequence[int]) -> int | None:
    """The chosen item of an RF-DPO prompt: the target if liked, else the next liked later item, else None."""
    if oracle.level(user_id, target) == "liked":
        return int(target)
    if len(later_items):
        levels = oracle.levels([user_id] * len(later_items), list(later_items))
        for item, lv in zip(later_items, levels):
            if lv == "liked":
                return int(item)
    return None


def build_rf_preferences(
    samples: pd.DataFrame,
    prompts: Sequence[str],
    item_scids: ScidTable,
    oracle: FeedbackOracle,
    stage: str,
    n_rejected: int,
    seed: int,
    candidates: np.ndarray,
    train_sequences: dict[int, np.ndarray],
) -> list[dict]:
    """RF-DPO examples of one stage (see the module docstring for the chosen/rejected rule).

    Args:
        samples: from :func:`sample_prompts` (needs ``t``, the target's index in the training sequence).
        prompts: one prompt per sample.
        oracle: the feedback source.
        stage: ``easy`` (liked vs disliked), ``hard`` (liked vs neutral) or ``all`` (either).
        candidates: ``[n_samples, K]`` the policy's beam items (the recommendations shown).
        train_sequences: ``Split.train_sequences`` (later liked items for the chosen fallback).
    Returns:
        Examples with extra fields ``rejected_levels`` and ``chosen_is_target``.
    """
    if stage not in RF_REJECTED_LEVELS:
        raise ValueError(f"unknown RF-DPO stage {stage!r}; use one of {tuple(RF_REJECTED_LEVELS)}")
    wanted = RF_REJECTED_LEVELS[stage]
    rng = stage_rng(seed, "rf/" + stage + "/negatives")
    out = []
    for row, (u, target, t) in enumerate(zip(samples["user_id"], samples["target"], samples["t"])):
        u, target = int(u), int(target)
        seq = train_sequences.get(u, np.empty(0, dtype=np.int64))
        if int(t) >= len(seq) or int(seq[int(t)]) != target:
            raise ValueError(
                f"user {u}: training sample t={int(t)} (target {target}) does not match train_sequences; pass "
                "Split.train in its leave-one-out order through sample_prompts"
            )
        chosen = rf_chosen(oracle, u, target, seq[int(t) + 1:])
        if chosen is None:
            continue
        beam = [int(c) for c in candidates[row] if c >= 0 and int(c) != chosen]
        beam = list(dict.fromkeys(beam))
        levels = oracle.levels([u] * len(beam), beam)
        rejected = [(c, lv) for c, lv in zip(beam, levels) if lv in wanted][:n_rejected]
        from_beams = len(rejected)
        if len(rejected) < n_rejected:
            taken = {c for c, _ in rejected} | {chosen}
            pool = [(i, lv) for lv in wanted for i in oracle.rated_items(u, lv) if i not in taken]
            if pool:
                order = rng.permutation(len(pool))[: n_rejected - len(rejected)]
                rejected.extend(pool[k] for k in order)
        if not rejected:
            continue
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
            "chosen_is_target": chosen == target,
        })
    return out
