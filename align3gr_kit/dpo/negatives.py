"""Rejected responses for SP-DPO: the policy's own constrained-beam proposals, graded by difficulty.

Difficulty of a candidate item relative to the chosen (ground-truth) item, ``prefix`` mode (the
paper): the number of leading SEMANTIC SCID levels the two share. Item SCIDs end with a
collision-resolving level (:func:`align3gr_kit.tokenizer.unique.append_unique_level`) that carries
no meaning, so it is never counted: two items whose SCIDs differ only there are semantically the
same item to the tokenizer and are no negative of any graded difficulty.

* ``easy``   - no shared prefix (level 0 differs): overlap 0
* ``medium`` - exactly the first level shared: overlap 1
* ``hard``   - the first two semantic levels shared, never all of them: 2 <= overlap < S (S semantic
  levels; with the default 3 that is exactly 2)

``similarity`` mode (a softer construction): candidates are graded by the cosine similarity of
their SC item embeddings to the chosen item's, split at the terciles of that similarity over the
whole catalogue (minus the chosen item): easy = least similar third, medium = middle, hard = most
similar third.

Negatives come from the policy's own beam (self-play; its width is ``dpo.sp_beam_width``, wider
than the evaluation beam so that each difficulty finds enough). When the beam holds fewer than
``n`` items of a stage's difficulty, the policy's highest-scored catalogue items of that difficulty
come next (:func:`response_logps`, ``dpo.sp_rank_pool``; what a beam restricted to that difficulty
would generate); only then are the rest drawn from the catalogue items of the same difficulty,
uniformly without replacement, with the stage's seeded generator (deterministic); the shares are
returned per prompt and reported per stage
(:func:`align3gr_kit.dpo.preferences.sp_preference_stats`). If the catalogue itself holds fewer
such items, the example keeps fewer negatives: the loss masks the missing slots. Repeats are never
used because a repeated negative would count twice in Softmax-DPO's sum over rejected responses.

``generated`` (the Softmax-DPO baseline of the paper's Table 5): ``n`` items drawn uniformly from
the policy's own beam, whatever their difficulty; ``random``: uniformly random catalogue items.

Imports of the kit: ``scid``, ``model``, ``decoding`` and ``dpo.trainer`` (its collator scores
responses, :func:`response_logps`); ``dpo.trainer`` never imports this module.
"""

from __future__ import annotations

from typing import Callable, Collection, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from align3gr_kit.scid import ScidTable

DIFFICULTIES = ("easy", "medium", "hard")
#: ``all`` mixes the three difficulties (progressive off); ``generated`` samples the beam uniformly
#: (Softmax-DPO baseline); ``random`` ignores the beams (ablation).
MIXED = ("all", "generated", "random")


def shared_prefix(codes: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Number of leading levels each row of ``codes`` ``[n, L]`` shares with ``chosen`` ``[L]``: ``[n]``."""
    eq = np.asarray(codes) == np.asarray(chosen)[None, :]
    return np.cumprod(eq, axis=1).sum(axis=1)


def prefix_grades(codes: np.ndarray, chosen: int, semantic_levels: int | None = None) -> np.ndarray:
    """Difficulty grade of every item against item ``chosen``: 0 easy, 1 medium, 2 hard, -1 no negative.

    ``codes`` is the ``[n_items, L]`` SCID table whose first ``semantic_levels`` (default: all L)
    levels carry meaning; overlap is counted over those only. -1: the chosen item itself and every
    item sharing all its semantic levels (they differ at most in the collision-resolving level).
    A ``hard`` grade exists only with ``semantic_levels >= 3``.
    """
    s = codes.shape[1] if semantic_levels is None else int(semantic_levels)
    overlap = shared_prefix(np.asarray(codes)[:, :s], np.asarray(codes)[chosen, :s])
    grades = np.minimum(overlap, 2)
    grades[overlap >= s] = -1
    grades[chosen] = -1
    return grades


def similarity_grades(unit_embeddings: np.ndarray, chosen: int) -> np.ndarray:
    """Tercile of each item's cosine similarity to item ``chosen``: 0 easy (least similar) .. 2 hard; -1 itself.

    ``unit_embeddings`` is ``[n_items, d]`` with unit-norm rows.
    """
    sims = unit_embeddings @ unit_embeddings[chosen]
    others = np.delete(sims, chosen)
    lo, hi = np.quantile(others, [1 / 3, 2 / 3])
    grades = np.where(sims <= lo, 0, np.where(sims <= hi, 1, 2))
    grades[chosen] = -1
    return grades


class NegativeSampler:
    """Pick ``n`` rejected items of one difficulty for a chosen item: beams first, then the catalogue.

    Args:
        item_codes: ``[n_items, L]`` item SCID codes (the ``ScidTable.codes``).
        mode: ``prefix`` (shared semantic SCID levels) or ``similarity`` (terciles of embedding similarity).
        item_embeddings: ``[n_items, d]`` SC item embeddings; required for ``similarity``.
        semantic_levels: how many leading levels of ``item_codes`` are semantic (the RQ-VAE's levels,
            ``TokenizeArtifacts.item_raw.shape[1]``); the rest (the uniqueness level) never count.
            None: all ``L``.
    """

    def __init__(self, item_codes: np.ndarray, mode: str = "prefix", item_embeddings: np.ndarray | None = None,
                 semantic_levels: int | None = None):
        self.codes = np.asarray(item_codes, dtype=np.int64)
        if mode not in ("prefix", "similarity"):
            raise ValueError(f"dpo.sp_difficulty must be 'prefix' or 'similarity', got {mode!r}")
        self.mode = mode
        self.semantic_levels = self.codes.shape[1] if semantic_levels is None else int(semantic_levels)
        if not 1 <= self.semantic_levels <= self.codes.shape[1]:
            raise ValueError(f"semantic_levels={semantic_levels} outside 1..{self.codes.shape[1]} (the SCID levels)")
        if mode == "prefix" and self.semantic_levels < 3:
            raise ValueError(
                f"item SCIDs have {self.semantic_levels} semantic level(s); the hard SP-DPO stage needs two shared "
                "semantic levels and a differing one: use tokenizer.levels >= 3 or dpo.sp_difficulty: similarity"
            )
        if mode == "similarity":
            if item_embeddings is None:
                raise ValueError("dpo.sp_difficulty=similarity needs the SC item embeddings (item_embeddings=[n_items, d])")
            emb = np.asarray(item_embeddings, dtype=np.float64)
            if len(emb) != len(self.codes):
                raise ValueError(f"item_embeddings has {len(emb)} rows for {len(self.codes)} items")
            self.unit = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)

    def grades(self, chosen: int) -> np.ndarray:
        """``[n_items]`` grade of every item for this chosen item (0/1/2, -1 = not a negative)."""
        if self.mode == "prefix":
            return prefix_grades(self.codes, chosen, self.semantic_levels)
        return similarity_grades(self.unit, chosen)

    def overlap(self, items: Sequence[int], chosen: int) -> list[int]:
        """Shared leading semantic levels of each of ``items`` with item ``chosen``."""
        s = self.semantic_levels
        return [int(x) for x in shared_prefix(self.codes[list(items), :s], self.codes[chosen, :s])]

    def pick(
        self,
        chosen: int,
        candidates: Sequence[int] | None,
        difficulty: str,
        n: int,
        rng: np.random.Generator,
        exclude: Collection[int] = (),
    ) -> tuple[list[int], int]:
        """Rejected items for one prompt.

        Args:
            chosen: the chosen item id.
            candidates: the policy's beam items, best first (``-1`` = padding); ignored for ``random``.
            difficulty: ``easy``, ``medium``, ``hard``, ``all`` (any grade, beam order), ``generated``
                (any item but the chosen one, drawn uniformly from the beam) or ``random`` (no beams).
            n: how many to return at most.
            rng: the stage's seeded generator (catalogue fill).
            exclude: items never picked (the user's own training items).
        Returns:
            ``(items, n_from_beams)``: up to ``n`` distinct item ids, beam items first in beam order.
        """
        grades = self.grades(chosen)
        if difficulty in DIFFICULTIES:
            ok = grades == DIFFICULTIES.index(difficulty)
        elif difficulty == "all":
            ok = grades >= 0
        elif difficulty in MIXED:  # the baselines take any other item, as the paper's Softmax-DPO does
            ok = np.ones(len(self.codes), dtype=bool)
            ok[chosen] = False
        else:
            raise ValueError(f"unknown SP-DPO difficulty {difficulty!r}; use one of {DIFFICULTIES + MIXED}")
        if len(exclude):
            ok[list(exclude)] = False
        picked: list[int] = []
        if difficulty != "random" and candidates is not None:
            beam = list(dict.fromkeys(int(c) for c in candidates if int(c) >= 0 and ok[int(c)]))
            if difficulty == "generated" and len(beam) > n:
                beam = [beam[k] for k in np.sort(rng.choice(len(beam), size=n, replace=False))]
            picked = beam[:n]
            if len(picked) == n:
                return picked, n
        from_beams = len(picked)
        pool = np.flatnonzero(ok)
        if picked:
            pool = np.setdiff1d(pool, picked, assume_unique=True)
        need = min(n - len(picked), len(pool))
        if need > 0:
            picked.extend(int(x) for x in rng.choice(pool, size=need, replace=False))
        return picked, from_beams


PromptEncoder = Callable[[str], list[int]]


@torch.no_grad()
def response_logps(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    items: Sequence[int],
    item_scids: ScidTable,
    encode_prompt: PromptEncoder | None = None,
    max_length: int = 256,
    batch_size: int = 64,
    precision: str = "auto",
) -> np.ndarray:
    """``[len(items)]`` log-probability of each item's SCID after ``prompt`` under ``model``: the
    score the constrained beam search ranks items by, computed exactly (teacher-forced) through the
    DPO collator, so the policy's best items of a difficulty can be found when its beam holds too few.
    ``precision``: ``model.dtype``, as in the beam search (:mod:`align3gr_kit.model.precision`).
    One prompt of :func:`response_logps_batch`, which scores many prompts in shared forward passes."""
    return response_logps_batch(model, tokenizer, [(prompt, items)], item_scids, encode_prompt, max_length,
                                batch_size, precision)[0]


@torch.no_grad()
def response_logps_batch(
    model: torch.nn.Module,
    tokenizer,
    queries: Sequence[tuple[str, Sequence[int]]],
    item_scids: ScidTable,
    encode_prompt: PromptEncoder | None = None,
    max_length: int = 256,
    batch_size: int = 64,
    precision: str = "auto",
) -> list[np.ndarray]:
    """:func:`response_logps` of many ``(prompt, items)`` queries: ``[len(items)]`` float64 per query.

    Queries are packed together, about ``batch_size`` items per forward pass (a query with more items
    is split into parts of ``batch_size``), and the scores stay on the device until one transfer at
    the end. Each prompt is encoded once and each item's SCID tokenized once (the collator's cache).
    """
    from align3gr_kit.dpo.trainer import SoftmaxDPOCollator, score_batch
    from align3gr_kit.model.precision import autocast

    if batch_size < 1:
        raise ValueError(f"response_logps_batch: batch_size={batch_size}; use 1 or more (decode.batch_size)")
    collator = SoftmaxDPOCollator(tokenizer, max_length=max_length, encode_prompt=encode_prompt)
    device = next(model.parameters()).device
    model.eval()
    # one example per part: its first item as "chosen", all of them as "rejected" (needs at least one)
    parts = []
    for prompt, items in queries:
        for start in range(0, len(items), batch_size):
            strings = [item_scids.string(int(i)) for i in items[start:start + batch_size]]
            parts.append({"prompt": prompt, "chosen": strings[0], "rejected": strings})
    parts = collator.tokenize(parts)
    scores = []  # [items of the forward] per forward, on the device
    group, n_group = [], 0
    for k, part in enumerate(parts):
        group.append(part)
        n_group += len(part["rejected"])
        if k + 1 < len(parts) and n_group + len(parts[k + 1]["rejected"]) <= batch_size:
            continue
        batch = collator(group)
        # the scored slots, found on the CPU: a boolean index on the device would wait for it
        slots = batch["rejected_mask"].flatten().nonzero().squeeze(1).to(device)
        batch = {key: v.to(device) for key, v in batch.items()}
        with autocast(precision, device):
            _, rejected = score_batch(model, batch)
        scores.append(rejected.flatten()[slots].float())
        group, n_group = [], 0
    flat = torch.cat(scores).cpu().double().numpy() if scores else np.zeros(0)
    out, pos = [], 0
    for _, items in queries:
        out.append(np.asarray(flat[pos:pos + len(items)], dtype=np.float64))
        pos += len(items)
    return out


@torch.no_grad()
def beam_candidates(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    item_scids: ScidTable,
    beam_width: int = 20,
    batch_size: int = 32,
    encode_prompt: PromptEncoder | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """The policy's constrained beam search over the catalogue for every prompt (self-play proposals).

    Args:
        model: the policy (the stage's starting policy, i.e. its frozen reference).
        prompts: sequential-prediction prompts.
        item_scids: the item SCID table (the trie's leaves).
        encode_prompt: ``prompt -> token ids``, the SAME encoder the collator uses (so the beams come
            from the context the loss scores); default: the kit's one prompt encoding,
            :func:`align3gr_kit.model.encoding.prompt_encoder`.
        precision: ``model.dtype`` of the beam search (:mod:`align3gr_kit.model.precision`).
    Returns:
        ``[n_prompts, beam_width]`` item ids, best first, ``-1`` where a beam found fewer items.
    """
    from align3gr_kit.decoding import constrained_beam_search, trie_from_scids
    from align3gr_kit.model.encoding import left_pad, prompt_encoder

    encode = encode_prompt or prompt_encoder(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trie = trie_from_scids(item_scids, tokenizer)
    out = np.full((len(prompts), beam_width), -1, dtype=np.int64)
    for start in tqdm(range(0, len(prompts), batch_size), desc="self-play beams", leave=False):
        input_ids, mask = left_pad([encode(p) for p in prompts[start:start + batch_size]], pad)
        res = constrained_beam_search(model, input_ids, mask, trie, beam_width=beam_width, precision=precision)
        items = res.items.cpu().numpy()[:, :beam_width]
        out[start:start + len(items), : items.shape[1]] = items
    return out
