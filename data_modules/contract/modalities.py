"""Optional per-modality metadata (``modalities.json``): what each event stream is and what its values mean.

Supervision text must not guess a domain: a ``value`` is a plain number unless the data set says
what it is. ``modalities.json`` (in the raw folder, or ``--modalities-meta FILE``) is a list of
objects, or a mapping name -> object::

    [{"name": "rate", "description": "movie ratings", "value_kind": "rating", "unit": "stars"},
     {"name": "workout", "description": "fitness log", "value_kind": "duration", "unit": "minutes"}]

``value_kind`` decides how values are summarised: ``amount``/``duration``/``count`` (total and
average), ``rating`` (average only; a sum of ratings means nothing), ``number`` (the default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_modules.contract.json_files import (
    check_unique,
    entries,
    read_json_file,
    text_field,
    warn_unknown_keys,
)
from data_modules.contract.names import check_name
from data_modules.util.errors import DataError

VALUE_KINDS = ("number", "amount", "rating", "count", "duration")
SHAPE = "a list of {name, description?, unit?, value_kind?}, or a mapping name -> object (or -> description)"
KEYS = ("name", "description", "unit", "value_kind")


@dataclass(frozen=True)
class ModalityMeta:
    """What one event modality is: a description for prompts, and the meaning of its values."""

    name: str
    description: str = ""
    unit: str = ""
    value_kind: str = "number"

    @property
    def label(self) -> str:
        """The words used for this modality in supervision text."""
        return self.description or self.name

    def with_unit(self, number: str) -> str:
        return f"{number} {self.unit}" if self.unit else number


def parse_modalities_meta(path: Path, raw: Any) -> tuple[ModalityMeta, ...]:
    """``modalities.json``'s parsed JSON; every wrong shape names the file and the entry."""
    items = entries(path, raw, SHAPE, value_key="description")
    out = []
    for where, item in items:
        warn_unknown_keys(path, where, item, KEYS)
        name = text_field(path, where, item, "name", required=True)
        check_name(name, path, entry=where)  # it names vocab/<name>.parquet and vectors/<name>.npy
        kind = item.get("value_kind", "number")
        if kind not in VALUE_KINDS:
            raise DataError(path, f"value_kind {kind!r}", entry=where, expected=f"one of {list(VALUE_KINDS)}")
        description = text_field(path, where, item, "description", required=False)
        unit = text_field(path, where, item, "unit", required=False)
        out.append(ModalityMeta(name, description, unit, kind))
    check_unique(path, [(w, m.name) for (w, _), m in zip(items, out)], "modality")
    return tuple(out)


def read_modalities_meta(path: str | Path) -> tuple[ModalityMeta, ...]:
    """Read ``modalities.json``."""
    path = Path(path)
    return parse_modalities_meta(path, read_json_file(path, SHAPE))


def resolve_modalities_meta(
    declared: tuple[ModalityMeta, ...] | None,
    path: Path | None,
    event_mods: Iterable[str],
    valued: Mapping[str, int],
) -> dict[str, ModalityMeta]:
    """Metadata for every event modality: the declared entries (``modalities.json`` at ``path``, checked
    against the data), plain defaults otherwise.

    ``valued``: modality -> events with a non-null value, for every modality present in the events.
    """
    event_mods = list(event_mods)
    given = {m.name: m for m in declared or ()}
    for name, meta in given.items():
        if name not in event_mods or name not in valued:
            raise DataError(
                path, f"names modality '{name}', which is not among the data's event modalities",
                entry=repr(name), expected=f"one of {sorted(set(event_mods) & set(valued))}",
            )  # fmt: skip
        if (meta.unit or meta.value_kind != "number") and not valued[name]:
            raise DataError(
                path, f"modality '{name}' has a unit/value_kind but its events carry no values",
                entry=repr(name), expected="a 'value' column with numbers for this modality, or no unit",
            )  # fmt: skip
    return {m: given.get(m, ModalityMeta(m)) for m in event_mods}


def meta_to_json(meta: dict[str, ModalityMeta]) -> dict[str, dict]:
    return {name: asdict(m) for name, m in meta.items()}


def meta_from_json(raw: dict[str, dict] | None) -> dict[str, ModalityMeta]:
    return {name: ModalityMeta(**body) for name, body in (raw or {}).items()}
