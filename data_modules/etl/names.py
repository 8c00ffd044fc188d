"""Names that become parts of paths (QA versions, run names) are checked where they enter."""

from __future__ import annotations

import re

from data_modules.util.errors import DataError

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, what: str) -> str:
    """``name`` if it is a safe single path component (letters, digits, '_', '-', '.'; not '.'/'..')."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name:
        raise DataError(
            what,
            f"'{name}' is not a safe name",
            expected="1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
    return name
