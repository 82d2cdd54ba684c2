"""ItemTrie: admits exactly the catalogue's SCIDs; per-level tables agree with brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align3gr_kit.decoding import ItemTrie, trie_from_scids
from align3gr_kit.scid import ScidTable


def catalogue(n: int, sizes: tuple[int, ...], seed: int = 0, offset: int = 100) -> torch.Tensor:
    """``[n, L]`` unique token-id rows with shared prefixes; level ``l`` uses its own id range."""
    rng = np.random.default_rng(seed)
    codes = np.unique(np.stack([rng.integers(0, s, 4 * n) for s in sizes], 1), axis=0)
    codes = codes[rng.permutation(len(codes))[:n]]
    starts = offset + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return torch.as_tensor(codes + starts)


@pytest.mark.parametrize("sizes", [(4, 5, 6), (3, 4, 4, 2), (7,)])
def test_paths_are_exactly_the_items(sizes):
    rows = catalogue(40, sizes)
    trie = ItemTrie(rows)
    paths = trie.paths()
    assert paths.shape == rows.shape
    assert {tuple(r) for r in paths.tolist()} == {tuple(r) for r in rows.tolist()}
    assert trie.n_nodes[0] == 1 and trie.n_nodes[-1] == len(rows)
    for d in range(1, trie.levels):  # nodes per depth = distinct prefixes (brute force with sets)
        assert trie.n_nodes[d] == len({tuple(r[:d]) for r in rows.tolist()})


def test_allowed_tokens_match_brute_force():
    rows = catalogue(50, (3, 4, 5))
    trie = ItemTrie(rows)
    lists = rows.tolist()
    for r in lists:
        for d in range(trie.levels):
            want = sorted({o[d] for o in lists if o[:d] == r[:d]})
            assert trie.allowed_tokens(r[:d]) == want
            mask = trie.allowed_mask(d, torch.tensor([trie.node_of(r[:d])]), vocab_size=200)[0]
            assert mask.nonzero().flatten().tolist() == want
    assert trie.allowed_tokens([]) == sorted({r[0] for r in lists})
    assert trie.allowed_tokens([999]) == []  # not a prefix of any item
    assert trie.allowed_tokens(lists[0]) == []  # complete


def test_leaves_are_item_ids_and_tables_consistent():
    rows = catalogue(30, (3, 3, 4), seed=1)
    trie = ItemTrie(rows)
    for i, r in enumerate(rows.tolist()):
        assert trie.node_of(r) == i
        assert trie.item_nodes[i, -1] == i
        for d in range(trie.levels):  # following the tables from each item's node reaches the next node
            node = trie.item_nodes[i, d]
            slot = (trie.child_tokens[d][node] == r[d]).nonzero().item()
            assert trie.child_nodes[d][node, slot] == trie.item_nodes[i, d + 1]
    last = trie.child_nodes[-1]
    assert sorted(last[last >= 0].tolist()) == list(range(len(rows)))
    assert trie.max_children == [int((t >= 0).sum(1).max()) for t in trie.child_tokens]


def test_rejects_duplicates_and_bad_shapes():
    rows = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 2, 3]])
    with pytest.raises(ValueError, match=r"items \[0, 2\]"):
        ItemTrie(rows)
    with pytest.raises(ValueError, match="negative token id"):
        ItemTrie(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="non-empty"):
        ItemTrie(torch.tensor([1, 2, 3]))


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def test_trie_from_scids_uses_tokenizer_ids():
    table = ScidTable(np.array([[0, 1, 0], [0, 2, 0], [3, 1, 0], [3, 1, 1]]), kind="item")
    tokenizer = _word_tokenizer(["user", "bought"])
    with pytest.raises(ValueError, match="not in the tokenizer"):
        trie_from_scids(table, tokenizer)
    tokenizer.add_tokens(table.vocabulary())
    trie = trie_from_scids(table, tokenizer)
    for i in range(table.n):
        assert tokenizer.convert_ids_to_tokens(trie.item_token_ids[i].tolist()) == table.tokens(i)
        assert trie.node_of(tokenizer.convert_tokens_to_ids(table.tokens(i))) == i
