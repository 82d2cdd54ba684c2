"""``reports/BENCHMARKS.md``'s ablation tables, regenerated from the files ``ablate --table`` wrote.

Each table lives in BENCHMARKS.md between two markers::

    <!-- table:synthetic/dpo -->
    ... the markdown of reports/tables/synthetic/dpo.json (:func:`~align3gr_kit.report.table_files.table_markdown`) ...
    <!-- /table -->

``python -m align3gr_kit report benchmarks`` rewrites every block from its JSON file and appends a
block for each table file that has none (under :data:`SECTION`); the text around the blocks (the
reading of each table) is left as it is. A block whose file is gone is an error: the number it
shows is no longer backed by a result file.

Layer: a writer; imports :mod:`~align3gr_kit.report.table_files` of :mod:`align3gr_kit.report`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from align3gr_kit.report.table_files import read_tables, table_markdown
from align3gr_kit.utils import project_root

SECTION = "## Ablation tables (written by `python -m align3gr_kit ablate --table`)"
BLOCK = re.compile(r"<!-- table:(?P<key>[^ ]+?) -->\n(?P<body>.*?)<!-- /table -->", re.S)


def table_files(tables_root: Path) -> dict[str, dict[str, Any]]:
    """``"<dataset>/<table>" -> document`` for every ``<tables_root>/<dataset>/<table>.json``."""
    root = Path(tables_root)
    out: dict[str, dict[str, Any]] = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            out.update({f"{folder.name}/{name}": doc for name, doc in read_tables(folder).items()})
    return out


def render(text: str, tables: dict[str, dict[str, Any]], source: str = "BENCHMARKS.md") -> tuple[str, list[str]]:
    """``text`` with every table block regenerated and missing ones appended; also the keys whose
    block changed or was added.

    Raises:
        FileNotFoundError: a block names a table with no JSON file.
    """
    changed: list[str] = []
    missing = [m["key"] for m in BLOCK.finditer(text) if m["key"] not in tables]
    if missing:
        raise FileNotFoundError(f"{source}: table block(s) {missing} have no reports/tables/<dataset>/<table>.json; "
                                "re-run the ablate command that made them, or delete the block")

    def fill(m: re.Match) -> str:
        body = table_markdown(tables[m["key"]])
        if body != m["body"]:
            changed.append(m["key"])
        return f"<!-- table:{m['key']} -->\n{body}<!-- /table -->"

    out = BLOCK.sub(fill, text)
    present = {m["key"] for m in BLOCK.finditer(text)}
    new = [k for k in tables if k not in present]
    if new:
        if SECTION not in out:
            out = out.rstrip("\n") + f"\n\n{SECTION}\n"
        for key in new:
            out = out.rstrip("\n") + f"\n\n### {key}\n\n<!-- table:{key} -->\n{table_markdown(tables[key])}<!-- /table -->\n"
            changed.append(key)
    return out, changed


def update_benchmarks(path: Path | None = None, tables_root: Path | None = None,
                      check: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Regenerate the table blocks of ``path`` (default ``reports/BENCHMARKS.md``) from
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
