"""The validation split carved from a benchmark's train users: one rule for tuning and diagnosis."""

from __future__ import annotations

import hashlib


def stable_fraction(key: str) -> float:
    """A uniform number in [0, 1) from a string, identical on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def in_validation(user_id: str, seed: int, fraction: float) -> bool:
    """Whether a train user belongs to the validation part (``fraction`` of them, by a stable hash)."""
    return stable_fraction(f"val:{seed}:{user_id}") < fraction
