"""Initialising the rows of new SCID tokens: SA-Init (TS-Rec) or a seeded normal.

SA-Init: the embedding of a new token ``t`` is the mean, over the keywords ``k_1..k_m`` describing
the items (users) that carry ``t``, of each keyword's embedding, where a keyword's embedding is the
mean of the backbone's rows of its sub-word tokens::

    e(t) = 1/m * sum_j  mean_{s in tok(k_j)} E[s]

The keywords come from a :class:`~align3gr_kit.prompts.keywords.KeywordExtractor` (TF-IDF by
default). A keyword is tokenized with a leading space, the form words take inside running text.
Untied output matrices (``lm_head``) get the same treatment with their own rows, so the new token
starts out both read and predicted like its keywords.

Why by hand: transformers' ``resize_token_embeddings(mean_resizing=True)`` gives every new row
(almost) the same vector; hundreds of SCID tokens need distinct, meaningful starting points.
"""

from __future__ import annotations

from typing import Sequence

import torch

from align3gr_kit.data.schema import RecDataset
from align3gr_kit.prompts.keywords import KeywordExtractor, token_keywords
from align3gr_kit.scid import ScidTable


def scid_keywords(
    ds: RecDataset,
    item_scids: ScidTable,
    user_scids: ScidTable | None,
    k: int,
    extractor: KeywordExtractor | None = None,
) -> dict[str, list[str]]:
    """``{token: keywords}`` for every item token (from item text) and user token (from profiles)."""
    out = token_keywords(item_scids, [ds.item_text(i) for i in range(ds.n_items)], k, extractor)
    if user_scids is not None:
        out.update(token_keywords(user_scids, ds.users.profile.tolist(), k, extractor))
    return out


def _embedding_matrices(model) -> list[torch.Tensor]:
    """The input matrix and, when not tied to it, the output matrix."""
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != mats[0].data_ptr():
        mats.append(out.weight)
    return mats


@torch.no_grad()
def normal_init(model, new_ids: Sequence[int], seed: int) -> None:
    """New rows ~ N(mean of old rows, std of old rows), per matrix, from a seeded generator.

    The statistics come from the rows before the first new id (the backbone's own vocabulary).
    """
    new_ids = torch.as_tensor(list(new_ids), dtype=torch.long)
    if not len(new_ids):
        return
    first_new = int(new_ids.min())
    gen = torch.Generator().manual_seed(int(seed))
    for w in _embedding_matrices(model):
        old = w[:first_new].float()
        mean, std = old.mean(0), old.std()
        noise = torch.randn(len(new_ids), w.shape[1], generator=gen) * std + mean
        w[new_ids] = noise.to(w.dtype).to(w.device)


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
    """Overwrite the rows of new tokens that have keywords with the SA-Init mean (module docstring).

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
        for w in mats:
            per_kw = torch.stack([w[torch.as_tensor(p)].float().mean(0) for p in pieces])
            w[tid] = per_kw.mean(0).to(w.dtype)
        done += 1
    return {"sa_init": done, "no_keywords": skipped}
