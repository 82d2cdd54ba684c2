"""Constrained decoding: a prefix trie over item SCIDs and a batched beam search that can only
produce real items.

Public API::

    ItemTrie(item_token_ids [n_items, L])                 trie tables per level
    trie_from_scids(scid_table, tokenizer) -> ItemTrie    from an item ScidTable
    constrained_beam_search(model, input_ids, attention_mask, trie, beam_width=20, topk=None,
                            tree_attention=None) -> BeamResult(items [B, K], scores [B, K])
    generate_reference(model, input_ids, attention_mask, trie, beam_width=20, topk=None) -> BeamResult
                                                          the same search through model.generate (slow)
    score_items(model, input_ids, attention_mask, trie) -> [B, n_items] log p(item | prompt), teacher forcing

Prompts are token ids, left-padded (``align3gr_kit.model.encoding.encode_prompts`` + ``left_pad``
build them the way SFT saw them).
"""

from __future__ import annotations

from align3gr_kit.decoding.beam import BeamResult, constrained_beam_search
from align3gr_kit.decoding.reference import generate_reference, score_items
from align3gr_kit.decoding.trie import ItemTrie, trie_from_scids

__all__ = [
    "BeamResult",
    "ItemTrie",
    "constrained_beam_search",
    "generate_reference",
    "score_items",
    "trie_from_scids",
]
