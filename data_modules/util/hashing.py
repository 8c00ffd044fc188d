"""Stable hashing, one home: the same numbers on every machine and run (Python's ``hash`` is salted).

Byte order is part of each caller's contract (changing it would move users between splits,
shards and QA choices), so it is an argument, not a guess.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal


def stable_hash64(text: str, byteorder: Literal["big", "little"] = "big") -> int:
    """An unsigned 64-bit blake2b hash of ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), byteorder)


def stable_fraction(key: str) -> float:
    """A uniform number in [0, 1) from a string."""
    return stable_hash64(key, "big") / 2**64


def stable_hexdigest(text: str, size: int = 12) -> str:
    """A short hex fingerprint of ``text`` (``size`` bytes of blake2b)."""
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: str | Path) -> str:
    """sha256 over a folder's files (relative names and contents; hidden files left out): the
    identity of a model's exact weights and configuration."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
