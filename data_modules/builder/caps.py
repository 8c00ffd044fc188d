"""Per-modality event caps: how many of a user's most recent events the model sees."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from data_modules.contract.columns import event_modalities

#: Event caps of the authors' code (most recent events kept per modality).
PAPER_CAPS: dict[str, int] = {"bill": 250, "mini": 150, "spm": 150, "app": 100, "search": 10}


#: Smaller default caps that keep the tiny CPU backbone's sequences short.
DEFAULT_CAPS: dict[str, int] = {"bill": 32, "mini": 16, "spm": 16, "app": 16, "search": 8}


FALLBACK_CAP = 32


def resolve_caps(modalities: Iterable[str], caps: Mapping[str, int] | None = None) -> dict[str, int]:
    """Per-modality event caps: explicit values first, then the defaults, then FALLBACK_CAP."""
    caps = dict(caps or {})
    out = {}
    for m in event_modalities(modalities):
        cap = int(caps.get(m, DEFAULT_CAPS.get(m, FALLBACK_CAP)))
        if cap < 1:
            raise ValueError(f"max_events for modality '{m}' must be >= 1, got {cap}")
        out[m] = cap
    return out


def parse_caps(text: str | None) -> dict[str, int]:
    """Parse ``bill=250,mini=150`` (or ``paper``) into a caps mapping."""
    if not text:
        return {}
    if text.strip() == "paper":
        return dict(PAPER_CAPS)
    caps = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not value:
            raise ValueError(f"bad cap '{part}': expected MODALITY=N, e.g. bill=250")
        caps[name.strip()] = int(value)
    return caps
