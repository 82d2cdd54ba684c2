"""Reference decoders: ``model.generate`` with ``prefix_allowed_tokens_fn``, and exhaustive scoring.

Both exist to check :func:`~align3gr_kit.decoding.beam.constrained_beam_search` (tests, the
benchmark): ``generate_reference`` is the library's own beam search under the trie constraint;
``score_items`` is teacher forcing of every item, the exact ranking a wide enough beam must find.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from align3gr_kit.decoding.beam import BeamResult, _check_inputs, finalize
from align3gr_kit.decoding.trie import ItemTrie

# generate initialises all beams but the first at -1e9 (not -inf); beams that never left that
# start (fewer valid continuations than beams) end with scores near -1e9 and are not real results.
_DEAD_SCORE = -1e8


@torch.inference_mode()
def generate_reference(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    beam_width: int = 20,
    topk: int | None = None,
) -> BeamResult:
    """Constrained beam search through ``model.generate`` (the slow, library reference).

    Args and returns as :func:`~align3gr_kit.decoding.beam.constrained_beam_search`:
    ``input_ids``/``attention_mask`` ``[B, T]`` left-padded; ``BeamResult`` ``[B, K]``.

    ``length_penalty=0`` makes ``sequences_scores`` the plain sum of log-probs, and exactly ``L``
    new tokens are generated (``max_new_tokens = min_new_tokens = L``): only SCID tokens are ever
    allowed, so an end-of-sequence token cannot cut a beam short.
    """
    _check_inputs(input_ids, attention_mask, beam_width)
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    T, L = input_ids.shape[1], trie.levels
    # Any valid first token: returned for a prefix outside the trie (a beam that already has score
    # -inf), because generate rejects an empty allowed list; such beams are filtered out below.
    fallback = trie.allowed_tokens([])[:1]

    def allowed(_batch_id: int, sent: torch.Tensor) -> list[int]:
        return trie.allowed_tokens(sent[T:].tolist()) or fallback

    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    gen_cfg = GenerationConfig(
        num_beams=beam_width,
        num_return_sequences=beam_width,
        max_new_tokens=L,
        min_new_tokens=L,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=pad,
        eos_token_id=None,
        bos_token_id=None,
    )
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=gen_cfg,
            prefix_allowed_tokens_fn=allowed,
        )
    finally:
        model.train(was_training)
    B = input_ids.shape[0]
    seqs = out.sequences[:, T : T + L].reshape(B, beam_width, -1).cpu()
    seq_scores = out.sequences_scores.reshape(B, beam_width).float().cpu()
    items = torch.full((B, beam_width), -1, dtype=torch.long)
    scores = torch.full((B, beam_width), float("-inf"))
    for b in range(B):
        seen: set[int] = set()
        for j in range(beam_width):
            item = trie.node_of(seqs[b, j]) if seqs.shape[2] == L else -1
            s = float(seq_scores[b, j])
            if item < 0 or item in seen or not s > _DEAD_SCORE:
                continue
            seen.add(item)
            items[b, j], scores[b, j] = item, s
    return finalize(items, scores, topk)


@torch.inference_mode()
def score_items(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    batch_size: int = 256,
) -> torch.Tensor:
    """``log p(item SCID | prompt)`` for every (user, item) by teacher forcing (no cache, no search).

    Args:
        input_ids, attention_mask: ``[B, T]`` left-padded prompts.
        trie: the catalogue (its ``item_token_ids`` are scored).
        batch_size: (user, item) sequences per forward.

    Returns:
        ``[B, n_items]`` float32 sums of per-token log-probs (log-softmax over the full vocabulary).
    """
    device = next(model.parameters()).device
    items = trie.item_token_ids.to(device)
    N, L = items.shape
    B, T = input_ids.shape
    out = torch.empty(B, N)
    was_training = model.training
    model.eval()
    try:
        pairs = torch.cartesian_prod(torch.arange(B), torch.arange(N)).to(device)
        for start in range(0, len(pairs), batch_size):
            u, i = pairs[start : start + batch_size].unbind(1)
            ids = torch.cat([input_ids.to(device)[u], items[i]], dim=1)
            mask = torch.cat([attention_mask.to(device)[u].long(), torch.ones_like(items[i])], dim=1)
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            logp = F.log_softmax(logits[:, T - 1 : T + L - 1].float(), dim=-1)
            out[u.cpu(), i.cpu()] = logp.gather(2, items[i][:, :, None]).squeeze(2).sum(1).cpu()
    finally:
        model.train(was_training)
    return out
