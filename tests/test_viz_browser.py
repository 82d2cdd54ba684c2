"""The codebook browser of notebook 02 survives its own option changes (switching side, levels)."""

from __future__ import annotations

import numpy as np

from align3gr_kit.data.synthetic import generate_synthetic
from align3gr_kit.scid import ScidTable
from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts
from align3gr_kit.viz import prefix_browser, prefix_listing


def test_prefix_browser_switches_side_and_levels(capsys):
    ds = generate_synthetic(12, 24, seed=0)
    items = ScidTable(np.stack([np.arange(24) % 3, np.arange(24) // 3, np.zeros(24, int)], 1), "item")
    users = ScidTable(np.stack([np.arange(12) % 2, np.arange(12) // 2], 1), "user")
    art = TokenizeArtifacts(items, users, items.codes, users.codes, np.zeros((24, 4)), np.zeros((12, 4)), [], {})
    box = prefix_browser(ds, art, limit=5)
    side, (l1, l2) = box.children[0], box.children[1].children
    side.value = "user"  # replaces l1's options: its value passes through None
    assert l1.value == 0 and [o[0] for o in l1.options] == ["<ua_0>", "<ua_1>"]
    l1.value = 1
    l2.value = 2
    side.value = "item"
    assert l1.value == 0 and l2.value == -1
    listing = prefix_listing(items, (1,), ds.items.title, limit=20)
    assert listing.id.tolist() == [1, 4, 7, 10, 13, 16, 19, 22] and all(s.startswith("<a_1>") for s in listing.SCID)
