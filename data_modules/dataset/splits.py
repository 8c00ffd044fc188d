"""The validation split carved from a benchmark's train users: one rule for tuning and diagnosis."""

from __future__ import annotations

from data_modules.util.hashing import stable_fraction


def in_validation(user_id: str, seed: int, fraction: float) -> bool:
    """Whether a train user belongs to the validation part (``fraction`` of them, by a stable hash)."""
    return stable_fraction(f"val:{seed}:{user_id}") < fraction
