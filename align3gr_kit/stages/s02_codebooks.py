"""Stage 02: how the codebooks came out (collisions, codebook use, NMI with categories).

The notebook adds the interactive views (UMAP maps, the SCID tree, the prefix browser); this
function computes the numbers and the cheap figures, so the command line gets them too.
"""

from __future__ import annotations

import math
from typing import Any

from align3gr_kit import viz
from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.stages.notebook import save_figure


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Collision table, codebook-usage figures and the NMI of first-level item codes with categories.

    Returns the stage's metrics. On a catalogue without category labels (the Amazon Industrial set)
    the NMI cannot be computed: it is NaN here (the notebook prints ``nan``), ``null`` in the manifest
    (:func:`align3gr_kit.utils.write_json` writes strict JSON), and ``item_code_category_nmi_reason``
    says why.
    """
    data, art = stage.input("00_data"), stage.input("01_tokenize")
    save_figure(viz.usage_figure(art.item_raw, art.summary["item_codebook_size"], "item"), stage, "item_usage")
    if art.user_raw is not None:
        save_figure(viz.usage_figure(art.user_raw, art.summary["user_codebook_size"], "user"), stage, "user_usage")
    collisions = viz.collision_table(art)
    items = data.dataset.items
    nmi = viz.code_category_nmi(art.items.codes, items.category)
    out: dict[str, Any] = {"item_code_category_nmi": round(nmi, 4)}
    if not math.isfinite(nmi):
        out["item_code_category_nmi_reason"] = (
            f"no item has a category label (items.category is empty or 'unknown' for all {len(items)} items), "
            "so the codes cannot be compared with categories")
    return {**out, **{f"{r.side}_collisions_after": int(r["collisions after"]) for _, r in collisions.iterrows()}}
