"""The exception and warning types for bad input, and the one shape of their messages.

Bad input (a data file, a given embedding file, a config value) raises :class:`InputError` (or a
subclass such as :class:`DataError`) whose message is one line: the file, the line or record (or byte
offset), the field, what was found and the fix. The command line prints it as ``error: <message>``
and exits with status 2, without a traceback (``--debug`` or ``ALIGN3GR_DEBUG=1`` re-raises it);
anything else that goes wrong is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input; the message names the file, the record/line, the field, what was found and the fix."""


class DataError(InputError):
    """Bad input data (a dataset's files or a given embedding file)."""


class DataWarning(UserWarning):
    """Input was changed by a documented rule (e.g. repeated (user, item) events dropped); says how many."""


def bad_input(path: str | os.PathLike, where: str, field: str, found: str, fix: str) -> DataError:
    """A :class:`DataError` whose message has the located form ``<path>: <where>, field <field>: <found>; <fix>``.

    Args:
        path: the file read.
        where: the record, e.g. ``line 501`` or ``user '17'`` (empty for the whole file).
        field: the field's name, e.g. ``item`` (empty when the whole record is at fault).
        found: what was found, e.g. ``'not-a-number' is not an integer``.
        fix: what to do about it.
    """
    loc = ", ".join(p for p in (where, f"field {field!r}" if field else "") if p)
    return DataError(f"{path}: {loc + ': ' if loc else ''}{found}; {fix}")
