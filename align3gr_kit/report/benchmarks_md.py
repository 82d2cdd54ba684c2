"""``reports/BENCHMARKS.md``'s generated blocks, regenerated from the committed result files.

The page opens with the headline (:mod:`~align3gr_kit.report.headline`) between two markers::

    <!-- headline -->
    ... one row per dataset and backbone: the best model of the chain against SASRec and Popularity ...
    <!-- /headline -->

and shows every table file of ``reports/tables/<dataset>/`` between two more::

    <!-- table:synthetic/dpo -->
    ... the short view of reports/tables/synthetic/dpo.json (:func:`block_markdown`) ...
    <!-- /table -->

The short view is the provenance line, the table itself and a generated line of which steps are
beyond the spread; the budget, the reading row by row and where each row came from stay in the
``.md`` beside the JSON (:func:`~align3gr_kit.report.table_files.table_markdown`), which the view
names. ``python -m align3gr_kit report benchmarks`` rewrites every block and appends one for each
table file that has none (under :data:`SECTION`); the text around the blocks is left as it is. A
block whose file is gone is an error: the number it shows is no longer backed by a result file.

Layer: a writer; imports :mod:`~align3gr_kit.report.headline`, :mod:`~align3gr_kit.report.pipeline_file`,
:mod:`~align3gr_kit.report.specs`, :mod:`~align3gr_kit.report.statistics`,
:mod:`~align3gr_kit.report.stage_metrics` and :mod:`~align3gr_kit.report.table_files` of
:mod:`align3gr_kit.report`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from align3gr_kit.report.headline import headline_markdown
from align3gr_kit.report.pipeline_file import FULL_TEST, PIPELINE
from align3gr_kit.report.specs import PAPER_DIRECTION
from align3gr_kit.report.stage_metrics import paired_reading
from align3gr_kit.report.statistics import (
    PAIRED_GAIN,
    PAIRED_LOSS,
    SEED_WITHIN,
    judged_keys,
    table_seed_paired,
)
from align3gr_kit.report.table_files import machines_lines, read_tables, table_markdown, table_reading
from align3gr_kit.utils import project_root

SECTION = "## Ablation tables (written by `python -m align3gr_kit ablate --table`)"
BLOCK = re.compile(r"<!-- table:(?P<key>[^ ]+?) -->\n(?P<body>.*?)<!-- /table -->", re.S)
HEADLINE = re.compile(r"<!-- headline -->\n(?P<body>.*?)<!-- /headline -->", re.S)
#: The key :func:`render` reports when the headline block changed.
HEADLINE_KEY = "headline"
_NAMES = {"recall@10": "Recall@10", "ndcg@10": "NDCG@10", "liked_share@10": "liked@10"}


def table_files(tables_root: Path) -> dict[str, dict[str, Any]]:
    """``"<dataset>/<table>" -> document`` for every ``<tables_root>/<dataset>/<table>.json``."""
    root = Path(tables_root)
    out: dict[str, dict[str, Any]] = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            out.update({f"{folder.name}/{name}": doc for name, doc in read_tables(folder).items()})
    return out


def beyond_spread(doc: dict[str, Any]) -> str:
    """One sentence naming each step of an ablation table that is beyond the spread on a judged metric
    (across seeds, paired by seed, or with one seed on the same users), with the paper's direction
    where it has one; or saying that none is."""
    keys = judged_keys(doc["rows"])
    paired = table_seed_paired(doc)
    directions = PAPER_DIRECTION.get(doc["table"], {})
    steps = [r for r in doc["rows"] if r.get("vs")]
    found = []
    for r in steps:
        parts = []
        for k in keys:
            verdict, d = r.get(f"{k} verdict"), r.get(f"d {k}")
            how = (["across seeds"] if verdict in ("gain", "loss") else []) + (
                ["on the same users"] if verdict in (PAIRED_GAIN, PAIRED_LOSS) else [])
            seed = paired.get((r["method"], k))
            if seed is not None and seed["verdict"] != SEED_WITHIN:
                how.append(f"paired by seed, {seed['up']}/{seed['seeds']} up")
                d = seed["d"] if d is None else d
            if how and d is not None:
                want = directions.get(r["method"])
                way = "" if want is None else ("; the paper's way" if (d > 0) == (want > 0) else "; against the paper")
                parts.append(f"{_NAMES[k]} {d:+.4f} ({', '.join(how)}{way})")
        if parts:
            found.append(f"**{r['method']}** vs {r['vs']}: " + ", ".join(parts))
    metrics = ", ".join(_NAMES[k] for k in keys)
    if not found:
        return f"No step of {len(steps)} is beyond the spread on {metrics}."
    return f"Beyond the spread ({len(steps)} steps; {metrics}): " + "; ".join(found) + "."


def _pipeline_steps(doc: dict[str, Any]) -> str:
    """One sentence on a run's paired steps (each model against the one trained before it)."""
    steps = doc.get("paired") or []
    if not steps:
        return "No per-user ranks kept for two models in a row: the steps are not judged on the same users."
    beyond = [f"{s['from']} → {s['to']} {s['delta']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
              for s in steps if paired_reading(s) != "within user-sampling noise"]
    return (f"Each model against the one before it on the same users (Recall@{steps[0].get('k', 10)}, paired "
            f"bootstrap 95% interval): {len(steps) - len(beyond)} of {len(steps)} steps within user-sampling noise"
            + (f"; beyond it: {'; '.join(beyond)}." if beyond else "."))


def block_markdown(key: str, doc: dict[str, Any]) -> str:
    """BENCHMARKS.md's short view of table file ``key`` (``"<dataset>/<table>"``): the provenance line
    of :func:`~align3gr_kit.report.table_files.table_markdown` (with a run's wall time and machine),
    its table, a generated line of the steps beyond the spread (and the table's extra comparisons), the
    machines when rows ran on several, and the path of the full ``.md``."""
    paragraphs = table_markdown(doc).rstrip("\n").split("\n\n")
    head = paragraphs[0]
    if doc["table"] == PIPELINE:
        head += "".join(" " + p for p in paragraphs if p.startswith("Wall time"))
        reading = [_pipeline_steps(doc)]
    elif doc["table"] == FULL_TEST:
        reading = [_pipeline_steps(doc)]
    else:
        # the extra comparisons a table asks for (e.g. RF-DPO after SP-DPO), in the same paragraph
        reading = [" ".join([beyond_spread(doc)] + [x for x in table_reading(doc) if x.startswith("Also ")])]
        reading += machines_lines(doc)
    table = next(p for p in paragraphs if p.startswith("|"))
    lines = [f"{head} Full file (budget, reading, sources): `reports/tables/{key}.md`.", "", table, "",
             *reading]
    return "\n".join(lines) + "\n"


def render(text: str, tables: dict[str, dict[str, Any]], source: str = "BENCHMARKS.md") -> tuple[str, list[str]]:
    """``text`` with the headline (when it has the markers) and every table block regenerated, and
    missing table blocks appended; also the keys whose block changed or was added (``headline``
    for the headline).

    Raises:
        FileNotFoundError: a block names a table with no JSON file.
    """
    changed: list[str] = []
    missing = [m["key"] for m in BLOCK.finditer(text) if m["key"] not in tables]
    if missing:
        raise FileNotFoundError(f"{source}: table block(s) {missing} have no reports/tables/<dataset>/<table>.json; "
                                "re-run the ablate command that made them, or delete the block")

    def fill(m: re.Match) -> str:
        body = block_markdown(m["key"], tables[m["key"]])
        if body != m["body"]:
            changed.append(m["key"])
        return f"<!-- table:{m['key']} -->\n{body}<!-- /table -->"

    def fill_headline(m: re.Match) -> str:
        body = headline_markdown(tables)
        if body != m["body"]:
            changed.append(HEADLINE_KEY)
        return f"<!-- headline -->\n{body}<!-- /headline -->"

    out = HEADLINE.sub(fill_headline, BLOCK.sub(fill, text))
    present = {m["key"] for m in BLOCK.finditer(text)}
    new = [k for k in tables if k not in present]
    if new:
        if SECTION not in out:
            out = out.rstrip("\n") + f"\n\n{SECTION}\n"
        for key in new:
            out = out.rstrip("\n") + f"\n\n### {key}\n\n<!-- table:{key} -->\n{block_markdown(key, tables[key])}<!-- /table -->\n"
            changed.append(key)
    return out, changed


def update_benchmarks(path: Path | None = None, tables_root: Path | None = None,
                      check: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Regenerate the generated blocks of ``path`` (default ``reports/BENCHMARKS.md``) from
    ``tables_root`` (default ``reports/tables``); with ``check`` write nothing.

    Returns:
        ``({"path", "changed": [keys that differ]}, [every table key])``.
    """
    from align3gr_kit.utils import atomic_path

    path = Path(path or project_root() / "reports" / "BENCHMARKS.md")
    tables = table_files(Path(tables_root or project_root() / "reports" / "tables"))
    text = path.read_text()
    out, changed = render(text, tables, str(path))
    if changed and not check:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(out)
    return {"path": path, "changed": changed}, sorted(tables)
