"""Documented, counted skips: saved in the manifest and logged."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def count_skip(skipped: dict[str, int], key: str, n: int, message: str) -> None:
    """Record a documented, counted skip (saved in the manifest) and log it."""
    if n:
        skipped[key] = skipped.get(key, 0) + int(n)
        log.warning("skipped %d %s", n, message)
