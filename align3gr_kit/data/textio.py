"""Reading text and JSON input files so that a wrong encoding or a malformed file is named, never guessed.

Encoding rules (the loaders document which one each file uses):

* A UTF-16/UTF-32 byte-order mark, or NUL bytes (UTF-16 without a mark, or a binary file), is refused
  with the encoding named and the command that converts the file; a UTF-8 byte-order mark is skipped.
* The declared encoding is used, with one exception for latin-1 formats (``u.item``, ``u.user``):
  latin-1 decodes *any* bytes, so a UTF-8 re-export would turn into mojibake (``AmÃ©lie``). Rule: a
  file whose bytes are valid UTF-8 *and* not pure ASCII is read as UTF-8. Latin-1 text with accented
  letters is almost never valid UTF-8: an accented latin-1 letter is one byte 0xC0-0xFF followed by
  an ASCII byte, an invalid UTF-8 sequence (the property M. Dürst, "The Properties and Promises of
  UTF-8", 1997, describes, and the check chardet's UTF-8 prober makes). The original GroupLens
  ``u.item`` is not valid UTF-8 (byte 76,620 is the lone 0xE9 of "Mis<E9>rables"), so it keeps its
  latin-1 reading.
* JSON: UTF-8, a key repeated inside one object is refused (Python's ``json`` would keep the last value
  and silently lose the others), nesting deeper than Python's parser allows is refused without a
  ``RecursionError`` traceback.
"""

from __future__ import annotations

import ast
import codecs
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from align3gr_kit.errors import DataError

# UTF-32 LE's mark starts with UTF-16 LE's: test the longer marks first.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32 LE"), (codecs.BOM_UTF32_BE, "UTF-32 BE"),
              (codecs.BOM_UTF16_LE, "UTF-16 LE"), (codecs.BOM_UTF16_BE, "UTF-16 BE"))


def wide_encoding(head: bytes) -> str | None:
    """How ``head`` (a file's first bytes) shows a UTF-16/32 or binary file, or ``None`` if it does not."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return f"{name} (byte-order mark {bom.hex(' ')} at byte 0)"
    nul = head.find(b"\x00")
    if nul >= 0:
        return f"UTF-16 without a byte-order mark, or binary (NUL byte at byte offset {nul})"
    return None


def _refuse_wide(path: Path, head: bytes, expected: str) -> None:
    found = wide_encoding(head)
    if found:
        name = {"ascii": "ASCII", "utf-8": "UTF-8"}.get(expected, expected)
        wide = "UTF-32" if found.startswith("UTF-32") else "UTF-16"
        how = (f"zcat {path.name} | iconv -f {wide} -t UTF-8 | gzip > {path.name}.new && mv {path.name}.new {path.name}"
               if path.suffix == ".gz" else
               f"iconv -f {wide} -t UTF-8 {path.name} > {path.name}.new && mv {path.name}.new {path.name}")
        raise DataError(f"{path}: the file is {found}, not {name} text; convert it, e.g. `{how}`")


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def read_text(path: Path, declared: str, utf8_if_valid: bool = False) -> tuple[str, str]:
    """The text of ``path`` and the encoding used, by the module's rules.

    Args:
        path: the file.
        declared: the format's documented encoding (``ascii``, ``latin-1``, ``utf-8``).
        utf8_if_valid: read as UTF-8 when the bytes are valid UTF-8 and not pure ASCII (for latin-1
            formats that users re-export as UTF-8).

    Raises:
        DataError: a UTF-16/32 or binary file, or bytes that the declared encoding cannot decode
            (with the line and byte offset).
    """
    raw = path.read_bytes()
    _refuse_wide(path, raw[:4096], declared)
    if raw.startswith(codecs.BOM_UTF8):
        raw, declared = raw[len(codecs.BOM_UTF8):], "utf-8"
    if utf8_if_valid and not raw.isascii():
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode(declared), declared
    except UnicodeDecodeError as e:
        name = {"ascii": "ASCII", "utf-8": "UTF-8"}.get(declared, declared)
        raise DataError(f"{path}: not {name} at line {_line_of(raw, e.start)} (byte offset {e.start}): byte "
                        f"0x{raw[e.start]:02x}; save the file as {name} (or use the original file)") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _duplicate_line(text: str, key: str) -> int | None:
    """The line of the key's second occurrence when the text shows it unambiguously (exactly twice)."""
    needle = json.dumps(key) + ":"
    first = text.find(needle)
    second = text.find(needle, first + 1) if first >= 0 else -1
    if second < 0 or text.find(needle, second + 1) >= 0:
        return None
    return text.count("\n", 0, second) + 1


def parse_json(text: str, path: Path, where: str = "") -> Any:
    """``json.loads`` that refuses repeated keys and over-deep nesting with a located :class:`DataError`.

    Args:
        text: the JSON text.
        path: the file it came from (for the message).
        where: the record, e.g. ``line 12`` for one line of a JSON-lines file (``""``: the whole file).
    """
    at = f"{where}: " if where else ""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        line = None if where else _duplicate_line(text, e.key)
        at = at or (f"line {line}: " if line else "")
        raise DataError(f"{path}: {at}key {e.key!r} appears twice in one JSON object; Python's json keeps only "
                        "the last value and the others would be lost: merge the two entries into one") from None
    except RecursionError:
        raise DataError(f"{path}: {at}JSON nested deeper than Python's parser allows (about "
                        f"{sys.getrecursionlimit():,} levels); this is not a dataset file: re-export it") from None


def read_json(path: Path) -> Any:
    """The JSON value in ``path`` (UTF-8, an optional UTF-8 byte-order mark skipped), by :func:`parse_json`.

    Raises:
        DataError: UTF-16/binary, not UTF-8 (line and byte offset), malformed (line and column),
            a repeated key, or over-deep nesting.
    """
    text, _ = read_text(path, "utf-8")
    try:
        return parse_json(text, path)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                        "fix the file or re-export it") from None


def _open_binary(path: Path):
    import gzip

    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSON-lines file (``.gz`` or plain, UTF-8).

    A line that is not JSON is read as a Python literal (older Amazon dumps write ``repr`` of dicts)
    with :func:`ast.literal_eval`, which parses literals only and never runs code; repeated dict keys
    are refused there too.

    Raises:
        DataError: as :func:`read_json`, located by line.
    """
    try:
        with _open_binary(path) as fh:
            _refuse_wide(path, fh.read(4096), "UTF-8")
        with _open_binary(path) as fh:
            for n, raw in enumerate(fh, 1):
                if n == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: not UTF-8 at line {n} (byte {e.start} of the line): byte "
                                    f"0x{raw[e.start]:02x}; use the original dump (UTF-8)") from None
                if line:
                    yield n, _json_or_literal(line, path, n)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); is the download complete?") from e


def _json_or_literal(line: str, path: Path, n: int) -> Any:
    try:
        return parse_json(line, path, f"line {n}")
    except json.JSONDecodeError:
        pass
    try:
        tree = ast.parse(line, mode="eval")
        value = ast.literal_eval(tree.body)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise DataError(f"{path}: line {n} is neither JSON nor a Python literal ({type(e).__name__}: "
                        f"{str(e)[:80]}); each line must hold one record") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
            if dup is not None:
                raise DataError(f"{path}: line {n}: key {dup!r} appears twice in one record; only one "
                                "value can be kept: merge the two entries into one")
    return value
