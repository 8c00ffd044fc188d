"""Topics behind D_uqa (paper 3.1): the questions a user's logs can answer, and which events answer them.

A topic is relevant to a user in proportion to how many of the user's *seen* history events (the
capped ones the model gets) match it. An event matches when its modality is one of the topic's
(all configured modalities when the topic names none) and

- ``categories`` is set: its category equals one of them (case-insensitive), or
- otherwise: one keyword occurs in its category or text as a whole word or phrase
  (case-insensitive; no letter or digit may continue it on either side, so "game" does not match
  "Games" and "live" does not match "Delivery"; the empty keyword matches every event).

``kind`` picks the answer's shape: ``events`` (counts, top actions, values), ``recency`` (when last
active) or ``trend`` (earlier vs later half of what is on record).

Where the pool comes from, in order: ``--topics FILE``; the raw folder's ``topics.json``; otherwise
:func:`derive_topics` builds one from the data itself (per modality: activity, recency, trend, and
one topic per frequent category). Nothing here knows any domain's vocabulary.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_modules.contract.json_files import (
    check_unique,
    entries,
    json_type,
    read_json_file,
    string_list,
    text_field,
    warn_unknown_keys,
)
from data_modules.util.errors import DataError

TOPIC_KINDS = ("events", "recency", "trend")
SHAPE = "a list of {name, question, keywords?, modalities?, categories?, kind?}, or a mapping name -> object"
KEYS = ("name", "question", "keywords", "modalities", "categories", "kind")


@functools.lru_cache(maxsize=4096)
def phrase_pattern(keywords: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive pattern matching any keyword as a whole word/phrase; None = match all."""
    words = [k.strip().lower() for k in keywords if k.strip()]
    if len(words) < len(keywords):  # an empty keyword matches every event
        return None
    # [^\W_] = a letter or digit: "_" and punctuation separate words (snake_case categories split)
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


@dataclass(frozen=True)
class Topic:
    """One life topic: the question it asks and the events it draws its answer from."""

    name: str
    question: str
    keywords: tuple[str, ...] = ("",)
    modalities: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    kind: str = "events"

    @property
    def specific(self) -> bool:
        """Whether the topic picks events by content (a category or keyword), not all of a modality."""
        return bool(self.categories) or phrase_pattern(self.keywords) is not None

    def matches(self, modality: str, category: str, text: str) -> bool:
        if self.modalities and modality not in self.modalities:
            return False
        if self.categories:
            return category.lower() in {c.lower() for c in self.categories}
        pattern = phrase_pattern(self.keywords)
        return pattern is None or bool(pattern.search(category) or pattern.search(text))

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def topic(
    name: str,
    question: str,
    keywords: Iterable[str] = ("",),
    modalities: Iterable[str] = (),
    categories: Iterable[str] = (),
    kind: str = "events",
) -> Topic:
    """A Topic with lower-cased keywords and tuple fields."""
    return Topic(
        name,
        question,
        tuple(k.strip().lower() for k in keywords) or ("",),
        tuple(modalities),
        tuple(categories),
        kind,
    )


def parse_topics(path: Path, raw: Any) -> tuple[Topic, ...]:
    """``topics.json``'s parsed JSON: a list of ``{name, question, keywords?, modalities?,
    categories?, kind?}`` objects, or a mapping name -> object (or -> question)."""
    items = entries(path, raw, SHAPE, value_key="question")
    out = []
    for where, item in items:
        warn_unknown_keys(path, where, item, KEYS)
        name = text_field(path, where, item, "name", required=True)
        question = text_field(path, where, item, "question", required=True)
        keywords = item.get("keywords", [""])
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise DataError(path, f"'keywords' is {json_type(keywords)}" if not isinstance(keywords, list)
                            else "'keywords' holds a value that is not a string", entry=where,
                            expected="a list of strings (\"\" matches every event)")  # fmt: skip
        modalities = string_list(path, where, item, "modalities")
        categories = string_list(path, where, item, "categories")
        kind = item.get("kind", "events")
        if kind not in TOPIC_KINDS:
            raise DataError(path, f"kind {kind!r}", entry=where, expected=f"one of {list(TOPIC_KINDS)}")
        out.append(topic(name, question, keywords or [""], modalities, categories, kind))
    check_unique(path, [(w, t.name) for (w, _), t in zip(items, out)], "topic")
    return tuple(out)


def check_topic_modalities(topics: Sequence[Topic], event_mods: Sequence[str], path: str | Path) -> None:
    """Every modality a topic names must be one of ``event_mods`` (the configured ones)."""
    for t in topics:
        unknown = [m for m in t.modalities if m not in event_mods]
        if unknown:
            raise DataError(path, f"unknown modality {unknown[0]!r}", entry=repr(t.name), column="modalities",
                            expected=f"one of the configured event modalities {list(event_mods)}")  # fmt: skip


def load_topics(path: str | Path, event_mods: Sequence[str]) -> tuple[Topic, ...]:
    """Read a ``topics.json`` (the raw folder's or a data set's) and check its modalities."""
    path = Path(path)
    topics = parse_topics(path, read_json_file(path, SHAPE))
    check_topic_modalities(topics, event_mods, path)
    return topics


def save_topics(path: str | Path, topics: Sequence[Topic]) -> None:
    from data_modules.util.atomic import write_json

    write_json(path, [t.to_json() for t in topics])
