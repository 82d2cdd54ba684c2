"""Stage 02: how the codebooks came out (collisions, codebook use, NMI with categories).

The notebook adds the interactive views (UMAP maps, the SCID tree, the prefix browser); this
function computes the numbers and the cheap figures, so the command line gets them too.
"""

from __future__ import annotations

from typing import Any

from align3gr_kit import viz
from align3gr_kit.config import RunConfig
from align3gr_kit.stages.contract import StageRun
from align3gr_kit.stages.notebook import save_figure


def run(cfg: RunConfig, stage: StageRun, progress: bool = True) -> dict[str, Any]:
    """Collision table, codebook-usage figures and the NMI of first-level item codes with categories."""
    data, art = stage.input("00_data"), stage.input("01_tokenize")
    save_figure(viz.usage_figure(art.item_raw, art.summary["item_codebook_size"], "item"), stage, "item_usage")
    if art.user_raw is not None:
        save_figure(viz.usage_figure(art.user_raw, art.summary["user_codebook_size"], "user"), stage, "user_usage")
    collisions = viz.collision_table(art)
    nmi = viz.code_category_nmi(art.items.codes, data.dataset.items.category)
    return {"item_code_category_nmi": round(nmi, 4),
            **{f"{r.side}_collisions_after": int(r["collisions after"]) for _, r in collisions.iterrows()}}
