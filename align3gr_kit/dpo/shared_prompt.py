"""Score a prompt's 1 + N responses against ONE pass over the prompt (tree attention over a packed row).

The full-sequence layout (:func:`align3gr_kit.dpo.softmax_dpo.batched_logps`) runs ``prompt +
response`` once per response: with N = 20 rejected responses of 5-6 SCID tokens after a prompt of
100-250 tokens, 21 forward passes over the same prompt per model and step. Here each prompt becomes
ONE packed row ::

    [pad ...] prompt  response_0  response_1 ... response_N

and a 4D attention mask lets every prompt token see the earlier prompt tokens (causal), and every
response token see the whole prompt and the earlier tokens of its *own* response only; position ids
restart at ``len(prompt)`` for every response. Each response token therefore sees exactly the keys
and positions it sees in its own full sequence, so the log-probs are the same (up to float rounding),
and gradients reach the prompt's activations from all responses at once. This is the tree attention
the trie beam search already uses for its beams (:mod:`align3gr_kit.decoding.beam`), written for
training: one forward without a cache, so autograd, peft adapters and autocast work unchanged.

Cost per prompt: one row of ``T_p + sum |y|`` tokens (about 150 + 21 x 6 = 276) instead of
``21 x (T_p + 6)`` (about 3,300): the linear layers, which dominate at these lengths, do ~12x less
work.

The log-prob of response token ``k`` is read from the logits of the token before it: the last prompt
token for ``k = 0`` (shared by all responses of that prompt), the response's own token ``k - 1``
otherwise. The collator lists these as flat ``score_*`` index tensors (one entry per response token).

Models whose attention does not take a custom 4D mask (flash-attention) or that have sliding-window
layers cannot use it (:func:`shared_prompt_supported`); they keep the full-sequence layout.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import selective_log_softmax

# The beam search's mask conventions (bool for sdpa, additive float for eager) and checks, shared so
# both tree-attention users hand the model the same form.
from align3gr_kit.model.attention import (
    TREE_ATTENTION,
    as_model_mask,
    attention_impl,
    forward_accepts,
    tree_attention_supported,
)

SEGMENT_PAD, SEGMENT_PROMPT = -1, 0


def shared_prompt_supported(model: torch.nn.Module) -> bool:
    """Whether ``model`` (plain or peft-wrapped) can score with a packed row and a custom 4D mask:
    sdpa or eager attention, full-attention layers only (no sliding window), and ``position_ids``."""
    return tree_attention_supported(model) and forward_accepts(model, "position_ids")


def pack_shared(
    rows: list[tuple[list[int], list[tuple[int, list[int]]]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Left-padded packed rows and the flat indices of every scored response token.

    Args:
        rows: one entry per packed row: ``(prompt_ids, [(sequence_index, response_ids), ...])``;
            ``sequence_index`` is the response's slot in the flat ``[S]`` output (chosen first, as
            :class:`~align3gr_kit.dpo.trainer.SoftmaxDPOCollator` orders them).
        pad_id: the padding token.
    Returns:
        ``input_ids``, ``position_ids``, ``segment_ids`` ``[R, L]`` (segment -1 = padding, 0 = prompt,
        ``k >= 1`` = the row's k-th response) and ``score_row``, ``score_pos``, ``score_token``,
        ``score_seq`` ``[K]`` (K = response tokens in the batch): token ``score_token`` is scored by
        the logits at ``(score_row, score_pos)`` and summed into output slot ``score_seq``.
    """
    L = max(len(p) + sum(len(r) for _, r in resp) for p, resp in rows)
    R = len(rows)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    segment_ids = torch.full((R, L), SEGMENT_PAD, dtype=torch.long)
    s_row, s_pos, s_tok, s_seq = [], [], [], []
    for r, (prompt, responses) in enumerate(rows):
        ids, pos, seg = list(prompt), list(range(len(prompt))), [SEGMENT_PROMPT] * len(prompt)
        off = L - (len(prompt) + sum(len(y) for _, y in responses))  # left padding
        for k, (seq, resp) in enumerate(responses, start=1):
            start = len(ids)
            # token 0 is predicted by the last prompt token, token j by the response's token j - 1
            sources = [len(prompt) - 1] + list(range(start, start + len(resp) - 1))
            s_row += [r] * len(resp)
            s_pos += [off + s for s in sources]
            s_tok += list(resp)
            s_seq += [seq] * len(resp)
            ids += resp
            pos += range(len(prompt), len(prompt) + len(resp))
            seg += [k] * len(resp)
        input_ids[r, off:] = torch.tensor(ids)
        position_ids[r, off:] = torch.tensor(pos)
        segment_ids[r, off:] = torch.tensor(seg)
    scores = {name: torch.tensor(xs, dtype=torch.long) for name, xs in
              (("score_row", s_row), ("score_pos", s_pos), ("score_token", s_tok), ("score_seq", s_seq))}
    return {"input_ids": input_ids, "position_ids": position_ids, "segment_ids": segment_ids, **scores}


def tree_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[R, 1, L, L]`` (True = query may attend the key) for packed rows.

    A query sees key ``j <= i`` when the key is a prompt token or belongs to the query's own response;
    padding keys are never seen. A padding query sees only itself: a fully masked row would give NaN
    under sdpa (and NaN gradients), though its output is never read.
    """
    R, L = segment_ids.shape
    idx = torch.arange(L, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [L, L]
    key, query = segment_ids[:, None, :], segment_ids[:, :, None]
    allowed = causal & (key != SEGMENT_PAD) & ((key == SEGMENT_PROMPT) | (key == query))
    allowed |= torch.eye(L, dtype=torch.bool, device=segment_ids.device)
    return allowed[:, None]


def shared_prompt_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], n_sequences: int) -> torch.Tensor:
    """Summed response log-probs ``[S]`` (``S = n_sequences``) of a packed batch (:func:`pack_shared`),
    one forward over ``[R, L]``; differentiable with respect to the model's parameters."""
    if not shared_prompt_supported(model):
        raise ValueError(
            f"shared-prompt scoring needs attention {TREE_ATTENTION} without sliding windows "
            f"(model: {attention_impl(model)!r}); "
            "set dpo.share_prompt: false (SoftmaxDPOCollator(share_prompt=False)) for this backbone"
        )
    seg = batch["segment_ids"]
    L = seg.shape[1]
    params = next(model.parameters())
    mask = as_model_mask(tree_mask(seg), attention_impl(model), params.dtype)
    # Only the last prompt token and the response tokens need logits, and they all sit at the end of
    # the left-padded rows: skip the [R, L, V] logits of the rest of the prompt.
    keep = L - int(batch["score_pos"].min())
    kwargs = {"logits_to_keep": keep} if forward_accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                   use_cache=False, **kwargs).logits
    picked = logits[batch["score_row"], batch["score_pos"] - (L - logits.shape[1])]  # [K, V]
    token_logps = selective_log_softmax(picked.float(), batch["score_token"])
    return token_logps.new_zeros(n_sequences).index_add(0, batch["score_seq"], token_logps)
