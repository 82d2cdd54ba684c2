"""A prefix trie over item SCID token sequences, stored as per-level tensors.

Every item is a fixed-length sequence of ``L`` token ids (one added vocabulary token per SCID
level). The trie numbers the nodes of each depth ``d`` (the distinct prefixes of length ``d``)
``0 .. n_nodes[d]-1`` in lexicographic order; depth 0 holds only the root (node 0). For each
level ``l`` (the token chosen at decoding step ``l``) two padded tables describe the edges::

    child_tokens[l]  LongTensor [n_nodes[l], max_children[l]]  vocabulary ids, -1 = padding
    child_nodes[l]   LongTensor [n_nodes[l], max_children[l]]  node id at depth l+1, -1 = padding

At the last level the "node id at depth L" is the item id itself (the row of ``item_token_ids``),
so a finished beam's node is its item. With these tables one beam-search step is a gather over the
vocabulary and a gather over the tables: no Python per beam (see :mod:`align3gr_kit.decoding.beam`).

The padded-children layout (rather than a ``[n_nodes, vocab]`` mask) keeps memory at
``O(n_items * max_children)`` per level, which stays small for 10k-item catalogues with 256 codes
per level, and makes the per-step gather only as wide as the widest node.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ItemTrie:
    """Prefix trie over the SCID token sequences of a catalogue.

    Args:
        item_token_ids: ``[n_items, L]`` token ids; row ``i`` is item ``i``'s SCID as vocabulary ids.
            Rows must be unique (an SCID names one item) and ids non-negative.

    Attributes:
        levels: ``L``, the number of SCID tokens per item.
        n_items: number of items (rows).
        item_token_ids: ``[n_items, L]`` the input, on CPU.
        n_nodes: ``L + 1`` ints, the number of nodes at each depth (``n_nodes[0] == 1``,
            ``n_nodes[L] == n_items``).
        child_tokens: ``L`` LongTensors ``[n_nodes[l], max_children[l]]`` (vocabulary ids, -1 pad).
        child_nodes: ``L`` LongTensors ``[n_nodes[l], max_children[l]]`` (child node ids, -1 pad; item
            ids at the last level).
        item_nodes: ``[n_items, L + 1]`` the node of each item at every depth (column 0 is the root,
            column ``L`` the item id): the per-level node ids of each item's path.
        scid_token_ids: sorted ``[n_scid_tokens]`` every token id any item uses.
    """

    def __init__(self, item_token_ids: torch.Tensor) -> None:
        rows = torch.as_tensor(item_token_ids).detach().to("cpu", torch.long)
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
            raise ValueError(
                f"ItemTrie: item_token_ids must be a non-empty [n_items, levels] tensor, got shape {tuple(rows.shape)}"
            )
        if (rows < 0).any():
            bad = int((rows < 0).any(dim=1).nonzero()[0])
            raise ValueError(
                f"ItemTrie: item {bad} has a negative token id {rows[bad].tolist()}; map every SCID token "
                "to its vocabulary id (were the SCID tokens added to the tokenizer?)"
            )
        uniq, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
        if len(uniq) != len(rows):
            dup = (counts[inverse] > 1).nonzero().flatten()[:2].tolist()
            raise ValueError(
                f"ItemTrie: items {dup} share the SCID tokens {rows[dup[0]].tolist()}; every item needs a unique "
                "SCID (resolve collisions in the tokenizer stage)"
            )
        self.item_token_ids = rows
        self.n_items, self.levels = rows.shape
        self.scid_token_ids = torch.unique(rows)

        # Node of every item at every depth: the rank of its length-d prefix among distinct prefixes.
        item_nodes = torch.zeros(self.n_items, self.levels + 1, dtype=torch.long)
        self.n_nodes = [1]
        for d in range(1, self.levels):
            _, inv = torch.unique(rows[:, :d], dim=0, return_inverse=True)
            item_nodes[:, d] = inv
            self.n_nodes.append(int(inv.max()) + 1)
        item_nodes[:, self.levels] = torch.arange(self.n_items)
        self.n_nodes.append(self.n_items)
        self.item_nodes = item_nodes
        self._prefix_node: dict[tuple[int, ...], int] | None = None
        self._allowed: dict[tuple[int, int], list[int]] = {}

        self.child_tokens: list[torch.Tensor] = []
        self.child_nodes: list[torch.Tensor] = []
        for lv in range(self.levels):
            parent, child, token = item_nodes[:, lv], item_nodes[:, lv + 1], rows[:, lv]
            # One edge per distinct (parent, child); sorted by parent then token so each parent's
            # children are contiguous and ordered by token id.
            edges = torch.unique(torch.stack([parent, token, child], dim=1), dim=0)
            parent, token, child = edges[:, 0], edges[:, 1], edges[:, 2]
            n_parent = self.n_nodes[lv]
            fanout = torch.bincount(parent, minlength=n_parent)
            start = torch.cumsum(fanout, 0) - fanout
            slot = torch.arange(len(edges)) - start[parent]
            width = int(fanout.max())
            tok_table = torch.full((n_parent, width), -1, dtype=torch.long)
            node_table = torch.full((n_parent, width), -1, dtype=torch.long)
            tok_table[parent, slot] = token
            node_table[parent, slot] = child
            self.child_tokens.append(tok_table)
            self.child_nodes.append(node_table)

    # ------------------------------------------------------------------ queries
    @property
    def max_children(self) -> list[int]:
        """Widest fan-out per level (the padded width of ``child_tokens[l]``)."""
        return [t.shape[1] for t in self.child_tokens]

    def node_of(self, prefix: Sequence[int] | torch.Tensor) -> int:
        """Node id (at depth ``len(prefix)``) of a token-id prefix, or -1 if no item starts with it.

        A full-length prefix returns the item id.
        """
        if self._prefix_node is None:
            # dict of every prefix of every item: O(1) lookups for generate's per-beam callback
            rows, nodes = self.item_token_ids.tolist(), self.item_nodes.tolist()
            self._prefix_node = {
                tuple(row[:d]): node[d] for row, node in zip(rows, nodes) for d in range(self.levels + 1)
            }
        key = tuple(prefix.tolist()) if isinstance(prefix, torch.Tensor) else tuple(int(t) for t in prefix)
        return self._prefix_node.get(key, -1)

    def allowed_tokens(self, prefix: Sequence[int] | torch.Tensor) -> list[int]:
        """Token ids that may follow ``prefix`` (a list of SCID token ids, length < L).

        Returns ``[]`` when ``prefix`` is not the start of any item or is already complete.
        """
        depth = len(prefix)
        node = self.node_of(prefix)
        if depth >= self.levels or node < 0:
            return []
        if (depth, node) not in self._allowed:
            toks = self.child_tokens[depth][node].cpu()
            self._allowed[depth, node] = toks[toks >= 0].tolist()
        return self._allowed[depth, node]

    def items_under(self, depth: int) -> torch.Tensor:
        """``[n_nodes[depth]]`` long: how many catalogue items start with each depth-``depth`` prefix."""
        if not 0 <= depth <= self.levels:
            raise ValueError(f"ItemTrie.items_under: depth {depth} is outside 0..{self.levels}")
        return torch.bincount(self.item_nodes[:, depth], minlength=self.n_nodes[depth])

    def prefix_of(self, depth: int, node: int) -> list[int]:
        """The ``depth`` token ids that lead from the root to ``node`` (a node id at that depth)."""
        if not 0 <= node < self.n_nodes[depth]:
            raise ValueError(f"ItemTrie.prefix_of: node {node} is outside 0..{self.n_nodes[depth] - 1} at depth {depth}")
        item = int((self.item_nodes[:, depth] == node).nonzero()[0])
        return self.item_token_ids[item, :depth].tolist()

    def allowed_mask(self, level: int, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Boolean ``[len(nodes), vocab_size]`` mask of the tokens allowed after each node of depth ``level``."""
        toks = self.child_tokens[level].to(nodes.device)[nodes]
        mask = torch.zeros(len(nodes), vocab_size + 1, dtype=torch.bool, device=nodes.device)
        # padding (-1) lands in the extra last column, dropped below
        mask.scatter_(1, torch.where(toks >= 0, toks, vocab_size), True)
        return mask[:, :vocab_size]

    def paths(self) -> torch.Tensor:
        """Every root-to-leaf path as ``[n_paths, L]`` token ids, read from the tables alone.

        Used to check that the trie admits exactly the catalogue (``paths`` == rows as sets).
        """
        seqs = torch.zeros(1, 0, dtype=torch.long)
        nodes = torch.zeros(1, dtype=torch.long)
        for lv in range(self.levels):
            toks, kids = self.child_tokens[lv][nodes], self.child_nodes[lv][nodes]
            keep = toks >= 0
            parent = keep.nonzero()[:, 0]
            seqs = torch.cat([seqs[parent], toks[keep][:, None]], dim=1)
            nodes = kids[keep]
        return seqs

    def to(self, device: torch.device | str) -> "ItemTrie":
        """Move the decoding tables to ``device`` (in place; returns ``self``)."""
        self.child_tokens = [t.to(device) for t in self.child_tokens]
        self.child_nodes = [t.to(device) for t in self.child_nodes]
        return self

    def __repr__(self) -> str:
        return (
            f"ItemTrie(n_items={self.n_items}, levels={self.levels}, nodes={self.n_nodes}, "
            f"max_children={self.max_children})"
        )


def trie_from_scids(table, tokenizer) -> ItemTrie:
    """Build the trie of an item :class:`~align3gr_kit.scid.ScidTable` in a tokenizer's vocabulary.

    Args:
        table: item ``ScidTable`` (``codes [n_items, L]``).
        tokenizer: a Hugging Face tokenizer that already holds every SCID token as one added token.

    Returns:
        ``ItemTrie`` over ``[n_items, L]`` token ids (row ``i`` = item ``i``).
    """
    vocab = table.vocabulary()
    ids = tokenizer.convert_tokens_to_ids(vocab)
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t, i in zip(vocab, ids) if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(
            f"trie_from_scids: {len(missing)} SCID tokens are not in the tokenizer (e.g. {missing[:3]}); "
            "add them with tokenizer.add_tokens(table.vocabulary()) and resize the model's embeddings"
        )
    tok_id = dict(zip(vocab, ids))
    rows = [[tok_id[t] for t in table.tokens(i)] for i in range(table.n)]
    return ItemTrie(torch.tensor(rows, dtype=torch.long))
