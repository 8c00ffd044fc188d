"""Names that become parts of paths (scenarios, modalities, QA versions, run names) are checked where
they enter, so that no name can write outside the folder it was given (``../x``, ``/abs``)."""

from __future__ import annotations

import re
from pathlib import Path

from data_modules.util.errors import DataError

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SAFE_NAME = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def is_safe_name(name: object) -> bool:
    """True for a single, harmless path component: never '.', '..', a separator or an absolute path."""
    return isinstance(name, str) and bool(_SAFE.fullmatch(name)) and ".." not in name


def check_name(name: str, what: str | Path, *, row: int | str | None = None, entry: str | None = None) -> str:
    """``name`` if it is a safe single path component, else a DataError naming ``what`` (an option,
    or the file the name came from, with ``row``)."""
    if not is_safe_name(name):
        raise DataError(
            what, f"'{name}' cannot be used as a file name", row=row, entry=entry, expected=SAFE_NAME
        )
    return name
