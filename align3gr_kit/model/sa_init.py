"""Initialising the rows of new SCID tokens: SA-Init (TS-Rec) or a seeded normal.

SA-Init (TS-Rec eq. 9): the keywords ``k_1..k_m`` describing the items (users) that carry a new
token ``t`` are tokenized by the backbone's tokenizer into the sub-tokens
``S(t) = tok(k_1) ++ ... ++ tok(k_m)`` (a multiset: a sub-token shared by two keywords counts
twice), and the token's row is the mean of the pretrained rows of all of them::

    e(t) = 1/|S(t)| * sum_{s in S(t)} E[s]

so a keyword split into three sub-tokens weighs three times a one-piece keyword (not a mean of
per-keyword means). The keywords come from a :class:`~align3gr_kit.prompts.keywords.KeywordExtractor`
(TF-IDF by default, or an instruct LLM: :mod:`align3gr_kit.prompts.llm_keywords`). A keyword is
tokenized with a leading space, the form words take inside running text. ``E`` is the pretrained
input matrix (on SmolLM2 and MiniLM tied with the output one, so one write sets both roles); an
untied output matrix (``lm_head``: tiny-llama, large hub models) gets the same mean of its own rows
of ``S(t)``, so the new token starts out both read and predicted like its keywords.

SA-Init sets only item tokens of the semantic (RQ-VAE) levels, the first ``model.sa_init_levels`` of
them when that is set (:func:`scid_keywords`). Rows that it does not set (user tokens, the item SCID's
collision-resolving last level, tokens without keywords, semantic levels beyond
``model.sa_init_levels``, or all of them with ``model.sa_init: false``) keep the init of
``model.new_token_init``: a seeded normal (:func:`normal_init`) or transformers' mean resizing
(:func:`mean_resizing_init`).

Why by hand: transformers' ``resize_token_embeddings(mean_resizing=True)`` gives every new row
(almost) the same vector; hundreds of SCID tokens need distinct, meaningful starting points.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from align3gr_kit.config import ModelConfig
from align3gr_kit.data.schema import RecDataset
from align3gr_kit.prompts.keywords import KeywordExtractor, token_keywords
from align3gr_kit.scid import ScidTable


def scid_keywords(
    ds: RecDataset,
    item_scids: ScidTable,
    k: int,
    extractor: KeywordExtractor | None = None,
    levels: int = 0,
    semantic_levels: int | None = None,
) -> dict[str, list[str]]:
    """``{token: keywords}`` for the item tokens of the semantic SCID levels (from item text).

    Only the RQ-VAE's levels carry meaning: the item SCID's last level resolves collisions (its code is
    an index among the items sharing a prefix, :func:`align3gr_kit.tokenizer.unique.append_unique_level`),
    so the items carrying one of its tokens share no content, and user tokens are left to
    ``model.new_token_init`` as well (SA-Init is TS-Rec's init of item tokens).

    Args:
        item_scids: the item table (semantic levels first, then the collision level).
        k: keywords per token.
        extractor: TF-IDF when ``None``; an :class:`~align3gr_kit.prompts.llm_keywords.LLMKeywords` for
            the LLM extractor.
        levels: ``model.sa_init_levels``: only the first ``levels`` semantic levels (the TS-Rec depth
            ablation: 1, 1-2, 1-3; capped at ``semantic_levels``); ``0`` = every semantic level.
        semantic_levels: how many leading levels are the RQ-VAE's (``tokenizer.levels``); ``None`` =
            all but the last (the tokenizer always appends one collision level).
    Returns:
        ``{token: keywords}`` for the chosen tokens only; every other new token gets no SA-Init row.
    """
    if levels < 0:
        raise ValueError(f"model.sa_init_levels: {levels} < 0; use 0 (every semantic level) or 1, 2, 3...")
    semantic = item_scids.levels - 1 if semantic_levels is None else int(semantic_levels)
    if not 1 <= semantic <= item_scids.levels:
        raise ValueError(f"SA-Init: {semantic} semantic levels for item SCIDs of {item_scids.levels} levels; "
                         f"tokenizer.levels must be between 1 and the SCID length")
    chosen = min(levels, semantic) if levels > 0 else semantic
    return token_keywords(item_scids, [ds.item_text(i) for i in range(ds.n_items)], k, extractor, levels=chosen)


def keyword_extractor(
    model_cfg: ModelConfig, cache_dir: str | Path | None, reuse: str | Path | None = None
) -> KeywordExtractor | None:
    """The extractor of ``model.sa_init_extractor``: ``None`` (TF-IDF, the default) or an
    :class:`~align3gr_kit.prompts.llm_keywords.LLMKeywords` on the backbone ``model.base`` (loaded on the
    first token not in the cache; the SCID rows play no part in the answers).

    Args:
        model_cfg: ``base``, ``sa_init_extractor``, ``dtype``.
        cache_dir: the stage's own folder for ``llm_keywords.json``.
        reuse: an earlier stage's cache folder; its answers are copied in when ``cache_dir`` has none,
            so stage 04 asks the model nothing about tokens stage 03 already described.
    """
    if model_cfg.sa_init_extractor == "tfidf":
        return None
    from align3gr_kit.model.pretrained import SOURCE_MANIFEST, WHEEL_MODELS, resolve_base
    from align3gr_kit.prompts.llm_keywords import LLMKeywords

    if model_cfg.base in ("tiny-llama", "minilm"):
        raise ValueError(f"model.sa_init_extractor = llm needs an instruct LLM, not model.base = {model_cfg.base!r}; "
                         "use sa_init_extractor: tfidf")
    folder = resolve_base(model_cfg.base)
    model_id = model_cfg.base
    if model_cfg.base in WHEEL_MODELS:  # the converted folder's source hash names the exact weights
        model_id += "@" + json.loads((Path(folder) / SOURCE_MANIFEST).read_text())["sha256"]

    def load():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
        return model, tok

    if cache_dir is not None and reuse is not None:
        from align3gr_kit.prompts.llm_keywords import CACHE_FILE

        source, target = Path(reuse) / CACHE_FILE, Path(cache_dir) / CACHE_FILE
        if source.exists() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return LLMKeywords(load=load, model_id=model_id, cache_dir=cache_dir, precision=model_cfg.dtype)


def _embedding_matrices(model) -> list[torch.Tensor]:
    """The input matrix and, when not tied to it, the output matrix."""
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != mats[0].data_ptr():
        mats.append(out.weight)
    return mats


def _new_rows(model, new_ids: Sequence[int], seed: int):
    """For each embedding matrix: ``(matrix, new ids, the rows before the first new id, a generator
    seeded with seed)``; nothing when there are no new ids."""
    ids = torch.as_tensor(list(new_ids), dtype=torch.long)
    if not len(ids):
        return
    first_new = int(ids.min())
    gen = torch.Generator().manual_seed(int(seed))
    for w in _embedding_matrices(model):
        yield w, ids, w[:first_new], gen


@torch.no_grad()
def normal_init(model, new_ids: Sequence[int], seed: int) -> None:
    """New rows ~ N(mean of old rows, std of old rows), per matrix, from a seeded generator.

    The statistics come from the rows before the first new id (the backbone's own vocabulary).
    """
    for w, new_ids, old, gen in _new_rows(model, new_ids, seed):
        old = old.float()
        mean, std = old.mean(0), old.std()
        # drawn on the CPU (the same rows on every device), then moved to the matrix's device
        noise = torch.randn(len(new_ids), w.shape[1], generator=gen).to(w.device) * std + mean
        w[new_ids] = noise.to(w.dtype)


@torch.no_grad()
def mean_resizing_init(model, new_ids: Sequence[int], seed: int) -> None:
    """New rows as transformers' ``resize_token_embeddings(mean_resizing=True)`` draws them, seeded.

    Each matrix's new rows ~ N(mu, 1e-9 * Sigma), mu and Sigma the mean and covariance of the rows
    before the first new id; just mu where ``Sigma`` is not positive definite (transformers' rule).
    The rows come out nearly identical: the "random init" baseline of the TS-Rec ablation.

    Why by hand: transformers applies it only to rows it appends while growing a matrix (SCID ids
    can fall inside a hub model's padded matrix, e.g. Qwen2.5) and samples from the global RNG.
    """
    for w, new_ids, old, gen in _new_rows(model, new_ids, seed):
        old = old.double()
        mean = old.mean(0)
        centered = old - mean
        cov = 1e-9 * (centered.T @ centered) / len(old)
        chol, info = torch.linalg.cholesky_ex(cov)
        rows = mean.expand(len(new_ids), -1)
        if int(info) == 0:
            z = torch.randn(len(new_ids), w.shape[1], generator=gen, dtype=torch.float64).to(chol.device)
            rows = rows + z @ chol.T
        w[new_ids] = rows.to(w.dtype).to(w.device)


def init_new_rows(model, new_ids: Sequence[int], seed: int, how: str) -> None:
    """``model.new_token_init``: ``normal`` (:func:`normal_init`) or ``mean_resizing`` (:func:`mean_resizing_init`)."""
    if how == "normal":
        normal_init(model, new_ids, seed)
    elif how == "mean_resizing":
        mean_resizing_init(model, new_ids, seed)
    else:
        raise ValueError(f"model.new_token_init: unknown value {how!r}; use normal or mean_resizing")


def keyword_token_ids(tokenizer, keywords: Sequence[str], exclude: set[int]) -> list[list[int]]:
    """Sub-word ids of each keyword (with a leading space), without ids in ``exclude``; empty lists dropped."""
    out = []
    for kw in keywords:
        ids = [i for i in tokenizer(" " + kw, add_special_tokens=False)["input_ids"] if i not in exclude]
        if ids:
            out.append(ids)
    return out


@torch.no_grad()
def sa_init(model, tokenizer, keywords: dict[str, list[str]], new_ids: Sequence[int]) -> dict[str, int]:
    """Overwrite the rows of new tokens that have keywords with the SA-Init mean (eq. 9, module docstring).

    Args:
        model: a causal LM whose vocabulary already holds the new tokens.
        tokenizer: its tokenizer.
        keywords: ``{token string: keywords}`` (see :func:`scid_keywords`).
        new_ids: ids of all added tokens (never used as keyword pieces).
    Returns:
        ``{"sa_init": tokens initialised, "no_keywords": tokens left as they were}``.
    """
    exclude = set(int(i) for i in new_ids) | set(tokenizer.all_special_ids)
    mats = _embedding_matrices(model)
    done = skipped = 0
    for tok, kws in keywords.items():
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"SA-Init: token {tok!r} is not in the vocabulary; add the SCID tokens first")
        pieces = keyword_token_ids(tokenizer, kws, exclude)
        if not pieces:
            skipped += 1
            continue
        # Eq. 9: one mean over every sub-token of every keyword (repeats included).
        sub = torch.as_tensor([i for p in pieces for i in p], dtype=torch.long)
        for w in mats:
            w[tid] = w[sub.to(w.device)].float().mean(0).to(w.dtype)
        done += 1
    return {"sa_init": done, "no_keywords": skipped}
