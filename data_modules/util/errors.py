"""Errors raised for bad input: each names the file and the column or row at fault."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message always starts with the file it concerns."""

    def __init__(
        self,
        path: str | Path,
        problem: str | None = None,
        *,
        column: str | None = None,
        row: int | str | None = None,
        entry: str | None = None,
        expected: str | None = None,
    ) -> None:
        if problem is None:  # rebuilt from its message (a DataLoader worker re-raises it so)
            super().__init__(str(path))
            self.path, self.column, self.row = str(path), None, None
            return
        where = str(path)
        if column is not None:
            where += f", column '{column}'"
        if row is not None:
            where += f", row {row}"
        if entry is not None:  # an entry of a JSON file: its index and name, or its key
            where += f", entry {entry}"
        message = f"{where}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)
        self.path = str(path)
        self.column = column
        self.row = row
