"""Build the multi-task SFT dataset (a Hugging Face ``datasets.Dataset``) and check it for leakage.

Columns: ``prompt``, ``completion`` (what trl's ``SFTTrainer`` trains on, loss on the completion
only), ``task``, ``variant`` (direction within the task, e.g. ``title->scid``), ``template`` (index of
the paraphrase), ``user_id`` (-1 when the row has no user), ``target`` (the item the row is about,
-1 when none), ``history`` (the item ids shown in the prompt, oldest first).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from align3gr_kit.config import PromptConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.data.split import Split
from align3gr_kit.prompts.keywords import KeywordExtractor
from align3gr_kit.prompts.tasks import TASKS, PromptContext, rows_frame
from align3gr_kit.prompts.templates import ALL_TASKS
from align3gr_kit.scid import ScidTable

_TASK_SEED = {name: k for k, name in enumerate(ALL_TASKS)}


def _resample(idx: np.ndarray, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Scale a task's units by ``weight``: whole copies plus a seeded fraction (order kept per copy)."""
    if weight < 0:
        raise ValueError(f"prompts.task_mix: weights must be >= 0, got {weight}")
    whole, frac = int(weight), weight - int(weight)
    parts = [idx] * whole
    n_extra = int(round(frac * len(idx)))
    if n_extra:
        parts.append(np.sort(rng.choice(idx, size=n_extra, replace=False)))
    return np.concatenate(parts) if parts else idx[:0]


def build_sft_dataset(
    ds: RecDataset,
    split: Split,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    cfg: PromptConfig,
    seed: int,
    keyword_extractor: KeywordExtractor | None = None,
    progress: bool = True,
):
    """The multi-task SFT dataset of a run.

    Args:
        ds: the dataset (text of items and users).
        split: its leave-one-out split; only ``split.train`` samples and ``split.train_sequences``
            feed user-bound rows (the leakage rule of :mod:`align3gr_kit.prompts.tasks`).
        item_scids: ``[n_items, L]`` item SCIDs.
        user_scids: ``[n_users, L_u]`` user SCIDs, or ``None`` (item-only tokenization: no user
            SCIDs in prompts, no B2).
        cfg: tasks, user-SCID switch, caps and task mix.
        seed: fixes template choices, subsamples and derived texts.
        keyword_extractor: token descriptions for TS-Align (TF-IDF when ``None``).
        progress: a progress bar over tasks.

    Returns:
        ``datasets.Dataset`` with the columns of the module docstring, tasks in ``cfg.tasks`` order.
    """
    from datasets import Dataset

    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"prompts.tasks: unknown task(s) {unknown}; valid: {list(TASKS)}")
    bad_mix = [t for t in cfg.task_mix if t not in TASKS]
    if bad_mix:
        raise ValueError(f"prompts.task_mix: unknown task(s) {bad_mix}; valid: {list(TASKS)}")
    if cfg.user_scid_in_prompt and user_scids is None:
        warnings.warn("prompts.user_scid_in_prompt is on but there are no user SCIDs (item-only tokenization): "
                      "prompts carry no user SCID and B2 is skipped", stacklevel=2)
    from align3gr_kit.user_alignment import b2_heldout_users

    heldout = frozenset(b2_heldout_users(ds.n_users, cfg.b2_holdout, seed).tolist())
    ctx = PromptContext(ds, split, item_scids, user_scids, cfg, keyword_extractor, heldout)
    frames = []
    for name in tqdm(cfg.tasks, desc="SFT tasks", disable=not progress):
        task = TASKS[name]
        rng = np.random.default_rng([seed, _TASK_SEED[name]])
        n = task.units(ctx)
        idx = np.arange(n)
        if cfg.max_per_task and n > cfg.max_per_task:
            idx = np.sort(rng.choice(n, size=cfg.max_per_task, replace=False))
        idx = _resample(idx, float(cfg.task_mix.get(name, 1.0)), rng)
        rows = task.build(ctx, idx, rng) if len(idx) else []
        if not rows and n and cfg.task_mix.get(name, 1.0) > 0:
            warnings.warn(f"prompts.tasks: task {name} produced no examples on dataset {ds.name!r} "
                          f"(it needs {task.needs or 'training samples'}); it is left out", stacklevel=2)
        frames.append(rows_frame(rows))
    df = pd.concat(frames, ignore_index=True) if frames else rows_frame([])
    df = df.astype({"template": "int64", "user_id": "int64", "target": "int64"})
    return Dataset.from_pandas(df, preserve_index=False)


def task_counts(sft) -> pd.DataFrame:
    """Examples per task and share of the dataset (columns ``task``, ``examples``, ``share``)."""
    tasks = pd.Series(sft["task"], dtype="string")
    counts = tasks.value_counts(sort=False)
    order = [t for t in TASKS if t in counts.index]
    out = pd.DataFrame({"task": order, "examples": [int(counts[t]) for t in order]})
    out["share"] = out.examples / max(1, out.examples.sum())
    return out


def _is_window(seq: np.ndarray, window: Sequence[int]) -> bool:
    """Whether ``window`` occurs in ``seq`` as a contiguous run."""
    m = len(window)
    if m == 0:
        return True
    w = np.asarray(window)
    for p in np.flatnonzero(seq == w[-1]):
        if p + 1 >= m and np.array_equal(seq[p + 1 - m:p + 1], w):
            return True
    return False


def find_leaks(sft, split: Split, item_scids: ScidTable, max_reports: int = 20) -> list[str]:
    """Rows that break the leakage rule of :mod:`align3gr_kit.prompts.tasks` (empty list = clean).

    For every row bound to a user ``u`` with training part ``s[:n-2]``:

    * sequence rows: ``history`` (+ ``target`` for next-item tasks) must be a contiguous window of
      ``s[:n-2]`` (C2 rows: ``target`` must occur in it);
    * item-centric rows (B1): the item must occur in ``s[:n-2]`` or be neither held-out item of ``u``;
    * text: the SCID string of ``u``'s validation or test item may appear in the prompt or the
      completion only if that item also occurs in ``s[:n-2]`` (a genuine re-consumption).

    Returns:
        Up to ``max_reports`` messages naming the row, task and the leaked event.
    """
    seqs = split.train_sequences
    held = {}
    for name, frame in (("validation", split.valid), ("test", split.test)):
        for u, y in zip(frame.user_id.to_numpy(), frame.target.to_numpy()):
            held.setdefault(int(u), []).append((name, int(y)))
    item_str = [item_scids.string(i) for i in range(item_scids.n)]
    next_item = {"A", "C1-1", "C1-2"}
    out: list[str] = []
    cols = zip(sft["task"], sft["user_id"], sft["target"], sft["history"], sft["prompt"], sft["completion"])
    for r, (task, u, y, hist, prompt, completion) in enumerate(cols):
        if u < 0:
            continue
        seq = seqs.get(int(u))
        if seq is None:
            out.append(f"row {r} ({task}): user {u} has no training sequence")
            continue
        if task in next_item or (task == "C3"):
            window = list(hist) + ([int(y)] if task in next_item else [])
            if not _is_window(seq, window):
                out.append(f"row {r} ({task}): history+target {window} of user {u} is not a window of s[:n-2]")
        elif task == "C2" and y >= 0 and not (seq == y).any():
            out.append(f"row {r} (C2): target {y} of user {u} is not in the user's training part")
        elif task == "B1" and y >= 0 and not (seq == y).any() and any(y == v for _, v in held.get(int(u), [])):
            out.append(f"row {r} (B1): item {y} is a held-out item of its user {u}")
        for name, v in held.get(int(u), []):
            if (seq == v).any():
                continue
            s = item_str[v]
            if s in prompt or s in completion:
                out.append(f"row {r} ({task}): the {name} item {v} ({s}) of user {u} appears in the text")
        if len(out) >= max_reports:
            break
    return out[:max_reports]
