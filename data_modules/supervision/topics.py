"""The default topic pool, derived from the data alone when the raw folder brings none."""

from __future__ import annotations

from collections.abc import Mapping

from data_modules.contract.modalities import ModalityMeta
from data_modules.contract.topics import Topic, topic


def derive_topics(
    category_counts: Mapping[str, Mapping[str, int]],
    meta: Mapping[str, ModalityMeta],
    *,
    max_categories: int = 8,
    min_share: float = 0.01,
) -> tuple[Topic, ...]:
    """The default pool, from the data alone: per modality, overall activity, recency and trend, plus
    one topic per frequent category (at least ``min_share`` of the modality's events, at most
    ``max_categories`` of them, most frequent first).

    ``category_counts``: modality -> category -> history events (null categories left out)."""
    out: list[Topic] = []
    for m, info in meta.items():
        label = info.label
        out += [
            topic(f"{label} activity", f"How active is the user in {label}?", modalities=[m]),
            topic(
                f"{label} recency",
                f"When was the user last active in {label}?",
                modalities=[m],
                kind="recency",
            ),
            topic(
                f"{label} trend",
                f"Is the user's {label} activity rising or falling?",
                modalities=[m],
                kind="trend",
            ),
        ]
        counts = category_counts.get(m, {})
        total = sum(counts.values())
        frequent = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        for cat, n in frequent[:max_categories]:
            if total and n / total >= min_share:
                out.append(
                    topic(
                        f"{label}: {cat}",
                        f"How does the user engage with {cat} in {label}?",
                        modalities=[m],
                        categories=[cat],
                    )  # fmt: skip
                )
    return tuple(out)
