"""Stage 02: how the codebooks came out (collisions, codebook use, NMI with categories).

The notebook adds the interactive views (UMAP maps, the SCID tree, the prefix browser); this
function computes the numbers and the cheap figures, so the command line gets them too.
"""

from __future__ import annotations

import math
from typing import Any

from align3gr_kit import viz
from align3gr_kit.config import RunConfig
from align3gr_kit.report.specs import table_rungs
from align3gr_kit.stages.contract import MANIFEST, StageRun
from align3gr_kit.stages.notebook import save_figure
from align3gr_kit.tokenizer.artifacts import TokenizeArtifacts
from align3gr_kit.utils import resolve_path


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


def unaligned_tokenizer(cfg: RunConfig) -> tuple[TokenizeArtifacts | None, str]:
    """The tokenizer of this run's twin without U-I alignment, for the joint map's comparison.

    That twin is the token table's "w/o U-I align" row for this seed (``ablate --table token`` names
    its runs ``<run_name>-token-NN-s<seed>``). Returns ``(its 01_tokenize artifacts, its run name)``
    when it has finished, else ``(None, a sentence naming the command that makes it)`` (or saying that
    this run is itself without U-I alignment).
    """
    if not cfg.tokenizer.u2i_align:
        return None, ("This run has no U-I alignment itself (tokenizer.u2i_align: false): its map is the one "
                      "without it.")
    rungs = table_rungs("token")
    row = next(i for i, r in enumerate(rungs) if r.overrides == {"tokenizer.u2i_align": False})
    name = f"{cfg.run_name}-token-{row:02d}-s{cfg.seed}"
    folder = resolve_path(cfg.runs_dir) / name / "01_tokenize"
    if (folder / MANIFEST).exists():
        return TokenizeArtifacts.load(folder), name
    return None, (f"No run without U-I alignment yet: `python -m align3gr_kit ablate --config <your config> --table "
                  f"token --seeds 1` makes one (run `{name}`, with its SFT); for its tokenizer alone, `python -m "
                  f"align3gr_kit run --config <your config> --run-name {name} --set tokenizer.u2i_align=false "
                  f"--stages 00,01`.")
