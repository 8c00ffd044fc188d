"""Atomic writes (temp file + rename) and checksums, so a crash never leaves a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; if the block succeeds it replaces ``final``
    in one step (see :func:`replace_dir`), else it is removed: readers see the old folder or the new,
    never a mixture."""
    import shutil
    import tempfile

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700: the result is shared like any other folder
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_siblings(final: str | Path) -> list[Path]:
    """Temporary folders :func:`atomic_dir` left beside ``final`` when its process was killed
    (only safe to remove while holding ``final``'s lock)."""
    final = Path(final)
    return sorted(final.parent.glob(f".{final.name}.tmp-*"))


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(new: str | Path, final: str | Path) -> None:
    """Put folder ``new`` at ``final``, replacing an existing ``final`` in one atomic swap where the
    system allows (the old folder ends at ``new`` and is removed); elsewhere by two renames."""
    import shutil

    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
        return
    if not _exchange(new, final):
        aside = final.with_name(f".{final.name}.tmp-old-{os.getpid()}")
        os.replace(final, aside)
        os.replace(new, final)
        new = aside
    shutil.rmtree(new, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, missing: str = "file not found") -> Any:
    """Parse a JSON file; a missing or malformed file is a DataError naming it."""
    from data_modules.util.errors import DataError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(path, missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not valid JSON: {err}") from None


def write_parquet(path: str | Path, table: pa.Table, *, row_group_size: int | None = None) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
