"""Batched, vectorised beam search constrained to the SCIDs of real items.

Why hand-written: ``model.generate(prefix_allowed_tokens_fn=...)`` (kept as the reference in
:mod:`align3gr_kit.decoding.reference`) runs the prompt once per *beam*, copies the whole KV cache
at every step to reorder beams, and calls a Python function for every beam at every step. The
constraint here is a fixed-depth trie, so the search is a few tensor ops per SCID level:

1. one forward over the prompts ``[B, T]`` fills the KV cache (logits of the last position only);
2. for each level ``l``: gather the log-probs of every beam's allowed children (``trie.child_tokens``)
   ``[B, w, C_l]``, add the beam scores, take the top ``beam_width`` of ``w * C_l`` per user, follow
   ``trie.child_nodes``, and run one forward of the ``B x beam_width`` chosen tokens.

The forward of step 2 uses *tree attention* by default: the ``beam_width`` new tokens of a user
are ``beam_width`` query positions of that user's single cache row, and a 4D attention mask lets
each see only the prompt and its own ancestors (one cached position per earlier level). The
prompt's keys are therefore stored once per user instead of once per beam, and beams are never
reordered in the cache (a new beam inherits its parent's mask row instead). Attention backends that
cannot take a custom 4D mask (e.g. flash-attention) and models with sliding-window layers fall back
to the usual layout: the cache is expanded to ``B * beam_width`` rows and reordered with
``Cache.reorder_cache``.

Prompts of one batch that open with the same tokens (the chat frame and the template's first words:
11 tokens of SmolLM2's task-A prompt, about a sixth of it) share them: step 1 runs that prefix once
(batch 1), repeats its cache to the batch and runs only each prompt's remainder after it
(:func:`shared_prefix`). The cache then holds ``[prefix | left padding | remainder]`` and the 2D
attention mask hides the padding, so every real token sees exactly what it saw before; positions
come from the mask as always. Used when every layer is full attention (a sliding window would count
the padding inside its window) and the prefix is at least :data:`MIN_SHARED_PREFIX` tokens.

Scores are ``log p(SCID tokens | prompt)``: log-softmax over the full vocabulary, then the
disallowed tokens are dropped, exactly as ``generate`` scores constrained beams (``log_softmax``
then ``PrefixConstrainedLogitsProcessor``), so both paths rank the same way and a score can be
checked against teacher forcing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from align3gr_kit.decoding.trie import ItemTrie
from align3gr_kit.model.attention import (
    TREE_ATTENTION,
    as_model_mask,
    attention_impl,
    forward_accepts,
    tree_attention_supported,
)
from align3gr_kit.model.precision import autocast



@dataclass
class BeamStep:
    """What one SCID level of the search saw and kept (``constrained_beam_search(trace=[])``), on CPU.

    Attributes:
        parents: ``[B, w]`` trie node (depth ``level``) of each beam entering the level.
        parent_scores: ``[B, w]`` their cumulative log-probs (0 at level 0).
        tokens: ``[B, w, C]`` the vocabulary ids the trie allows after each beam, ``-1`` padding.
        scores: ``[B, w, C]`` cumulative log-prob of each allowed continuation, ``-inf`` at padding.
        kept_parent / kept_slot: ``[B, k]`` the beam and the column of ``tokens`` each kept beam came
            from, best first.
        kept_scores: ``[B, k]`` the kept cumulative log-probs; kept_nodes: ``[B, k]`` their trie nodes
            at depth ``level + 1`` (item ids at the last level).
    """

    level: int
    parents: torch.Tensor
    parent_scores: torch.Tensor
    tokens: torch.Tensor
    scores: torch.Tensor
    kept_parent: torch.Tensor
    kept_slot: torch.Tensor
    kept_scores: torch.Tensor
    kept_nodes: torch.Tensor


@dataclass
class BeamResult:
    """Ranked items per user.

    Attributes:
        items: ``[B, K]`` long, item ids best first; ``-1`` pads users with fewer than ``K`` items.
        scores: ``[B, K]`` float32, ``log p(item SCID | prompt)`` (sum over levels); ``-inf`` at padding.
    """

    items: torch.Tensor
    scores: torch.Tensor

    def cpu(self) -> "BeamResult":
        return BeamResult(self.items.cpu(), self.scores.cpu())

    @staticmethod
    def concat(parts: list["BeamResult"]) -> "BeamResult":
        """Stack results of several user batches (padding to the widest ``K``)."""
        k = max(p.items.shape[1] for p in parts)
        items = [F.pad(p.items, (0, k - p.items.shape[1]), value=-1) for p in parts]
        scores = [F.pad(p.scores, (0, k - p.scores.shape[1]), value=float("-inf")) for p in parts]
        return BeamResult(torch.cat(items), torch.cat(scores))


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_width: int) -> None:
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be [B, T]"
        )
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError(
            "constrained decoding: prompts must be left-padded (attention_mask[:, -1] must be 1); "
            "set tokenizer.padding_side = 'left'"
        )


#: Shortest common prefix worth a forward of its own (below it the batch runs the prompts whole).
MIN_SHARED_PREFIX = 4


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Tokens every left-padded prompt of the batch starts with, at most the shortest prompt's length
    minus one (each prompt keeps its last token, whose logits start the search)."""
    lengths = attention_mask.sum(1)
    shortest = int(lengths.min())
    if shortest <= 1 or input_ids.shape[0] < 2:
        return 0
    starts = input_ids.shape[1] - lengths  # [B] first real position
    idx = starts[:, None] + torch.arange(shortest - 1, device=input_ids.device)[None]
    heads = input_ids.gather(1, idx)  # [B, shortest - 1] each prompt's first tokens
    same = (heads == heads[:1]).all(0).long()
    return int(same.cumprod(0).sum())


def _prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: int, extra: dict):
    """Step 1 of the search: ``(out, attention_mask)`` of the forward over the prompts, the shared
    ``prefix`` tokens run once (see the module docstring); the returned mask is the one the cache
    layout needs afterwards (``[prefix ones | the remainder's left-padded mask]``, as wide as before)."""
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    if not prefix:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                    **extra)
        return out, attention_mask
    B, T = input_ids.shape
    starts = T - attention_mask.sum(1)
    first = int(starts[0])
    head = model(input_ids=input_ids[:1, first:first + prefix], use_cache=True,
                 position_ids=torch.arange(prefix, device=input_ids.device)[None], **extra)
    cache = head.past_key_values
    cache.batch_repeat_interleave(B)
    # each row's remainder stays where it was, shifted left by `prefix`: [left padding | remainder]
    cols = torch.arange(T - prefix, device=input_ids.device)[None]
    real = cols >= starts[:, None]
    rest_ids = input_ids[:, prefix:].masked_fill(~real, 0)
    mask = torch.cat([torch.ones(B, prefix, dtype=attention_mask.dtype, device=input_ids.device), real.long()], 1)
    rest_pos = (prefix + cols - starts[:, None]).masked_fill(~real, 0)
    out = model(input_ids=rest_ids, attention_mask=mask, position_ids=rest_pos, past_key_values=cache, use_cache=True,
                **extra)
    return out, mask


def finalize(items: torch.Tensor, scores: torch.Tensor, topk: int | None) -> BeamResult:
    """Sort ``[B, W]`` finished beams by score and cut to ``K = min(topk, most finite beams)`` columns."""
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    items = items.gather(1, order)
    finite = torch.isfinite(scores)
    k = int(finite.sum(1).max()) if finite.numel() else 0
    if topk is not None:
        k = min(k, topk)
    items = torch.where(finite, items, -1)[:, :k]
    scores = torch.where(finite, scores, float("-inf"))[:, :k]
    return BeamResult(items, scores.float())


@torch.inference_mode()
def constrained_beam_search(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    beam_width: int = 20,
    topk: int | None = None,
    tree_attention: bool | None = None,
    precision: str = "float32",
    trace: list[BeamStep] | None = None,
    share_prefix: bool | None = None,
) -> BeamResult:
    """Top items per user by beam search over the item trie (one forward per SCID level).

    Args:
        model: a Hugging Face causal LM (or a PEFT wrapper of one) whose vocabulary holds the SCID
            tokens; used in its own dtype and device, switched to eval mode for the call.
        input_ids: ``[B, T]`` prompt token ids, left-padded.
        attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding.
        trie: the catalogue's :class:`ItemTrie` (its tables are copied to the model's device).
        beam_width: beams kept per user at every level (Align3GR/LC-Rec: 20).
        topk: return at most this many items per user; ``None`` = ``beam_width``.
        tree_attention: share each user's prompt cache between its beams through a 4D mask (see the
            module docstring); ``None`` = when the attention implementation takes a 4D mask (sdpa,
            eager) and every layer is full attention (no sliding window).
        precision: ``model.dtype`` semantics (:mod:`align3gr_kit.model.precision`): ``auto`` =
            bf16 autocast where the hardware has bf16 units; scores are accumulated in fp32 either way.
        trace: a list to append one :class:`BeamStep` per level to (the decoding walk of notebook 04);
            ``None`` records nothing and costs nothing.
        share_prefix: run the prompts' common first tokens once (module docstring); ``None`` = when
            every layer is full attention and they are at least :data:`MIN_SHARED_PREFIX` tokens.

    Returns:
        :class:`BeamResult` with ``items``/``scores`` ``[B, K]``, ``K = min(topk or beam_width,
        most finite beams of any user)``; distinct items best first (SCIDs are unique, so distinct
        final beams are distinct items); ``-1``/``-inf`` where a user has fewer valid beams.
    """
    _check_inputs(input_ids, attention_mask, beam_width)
    impl = attention_impl(model)
    # A custom 4D mask replaces every layer's own mask, so it needs an attention implementation
    # that applies it (sdpa, eager) and only full-attention layers (sliding-window caches are cut).
    supported = tree_attention_supported(model)
    if tree_attention is None:
        tree_attention = supported
    elif tree_attention and not supported:
        raise ValueError(
            f"tree_attention=True needs attention implementation {TREE_ATTENTION} (model: {impl!r}) and "
            "full-attention layers only (no sliding window); pass tree_attention=None to choose automatically"
        )
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device).long()
    child_tokens = [t.to(device) for t in trie.child_tokens]
    child_nodes = [t.to(device) for t in trie.child_nodes]
    B, T = input_ids.shape
    W = beam_width
    users = torch.arange(B, device=device)

    was_training = model.training
    model.eval()
    prefix = 0
    if share_prefix is not False and supported:  # full-attention layers only (see the module docstring)
        prefix = shared_prefix(input_ids, attention_mask)
        if share_prefix is None and prefix < MIN_SHARED_PREFIX:
            prefix = 0
    with autocast(precision, device):
        try:
            # Position ids from the mask (as generate does) so left padding does not shift positions.
            extra = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
            out, attention_mask = _prefill(model, input_ids, attention_mask, prefix, extra)
            cache = out.past_key_values
            logp = F.log_softmax(out.logits[:, -1].float(), dim=-1)[:, None, :]  # [B, w=1, V]
            del out
            next_pos = attention_mask.sum(1)  # [B] position of the first generated token

            scores = torch.zeros(B, 1, device=device)  # [B, w] accumulated log-probs
            nodes = torch.zeros(B, 1, dtype=torch.long, device=device)  # [B, w] trie node at depth lv
            ancestors = torch.zeros(B, 1, 0, dtype=torch.bool, device=device)  # [B, w, cached beam slots]
            for lv in range(trie.levels):
                w = nodes.shape[1]
                toks = child_tokens[lv][nodes]  # [B, w, C] vocab ids, -1 pad
                C = toks.shape[2]
                cand = logp.gather(2, toks.clamp(min=0)).masked_fill(toks < 0, float("-inf")) + scores[:, :, None]
                top, flat = cand.reshape(B, w * C).topk(min(W, w * C), dim=1)  # sorted, best first
                # Fewer valid continuations than beams (a small first level, a tiny catalogue): keep only
                # as many beams as the fullest user needs; the others' extra beams are dead (-inf).
                k = max(int(torch.isfinite(top).sum(1).max()), 1)
                top, flat = top[:, :k], flat[:, :k]
                parent, slot = flat // C, flat % C
                dead = torch.isinf(top)
                parents = nodes
                nodes = child_nodes[lv][nodes.gather(1, parent), slot].masked_fill(dead, 0)
                chosen = toks.reshape(B, w * C).gather(1, flat).masked_fill(dead, 0)  # [B, k] tokens to feed
                if trace is not None:
                    trace.append(BeamStep(lv, parents.cpu(), scores.cpu(), toks.cpu(), cand.cpu(), parent.cpu(),
                                          slot.cpu(), top.cpu(), nodes.cpu()))
                scores = top
                if lv == trie.levels - 1:
                    break
                pos = (next_pos + lv)[:, None].expand(B, k)
                if tree_attention:
                    # one cache row per user; a new beam sees the prompt, its parent's ancestors and itself
                    # (the k slots this forward appends)
                    eye = torch.eye(k, dtype=torch.bool, device=device).expand(B, k, k)
                    inherited = ancestors.gather(1, parent[:, :, None].expand(B, k, ancestors.shape[2]))
                    ancestors = torch.cat([inherited, eye], dim=2)
                    prompt_mask = attention_mask.bool()[:, None, None, :].expand(B, 1, k, T)
                    mask = torch.cat([prompt_mask, ancestors[:, None]], dim=3)  # [B, 1, k, T + slots]
                    out = model(
                        input_ids=chosen,
                        attention_mask=as_model_mask(mask, impl, dtype),
                        position_ids=pos,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    logp = F.log_softmax(out.logits.float(), dim=-1)  # [B, k, V]
                else:
                    # expanded layout: row b*k+j holds beam j of user b; at level 0 every beam comes from
                    # prompt row b, so this one index_select also expands the cache from users to beams
                    cache.reorder_cache((users[:, None] * w + parent).reshape(-1))
                    beam_mask = F.pad(attention_mask.repeat_interleave(k, dim=0), (0, lv + 1), value=1)
                    out = model(
                        input_ids=chosen.reshape(B * k, 1),
                        attention_mask=beam_mask,
                        position_ids=pos.reshape(B * k, 1),
                        past_key_values=cache,
                        use_cache=True,
                    )
                    logp = F.log_softmax(out.logits[:, -1].float(), dim=-1).reshape(B, k, -1)
                cache = out.past_key_values
                del out
        finally:
            model.train(was_training)
    return finalize(nodes, scores, topk)
