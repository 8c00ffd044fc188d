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

from data_modules.contract.names import check_name
from data_modules.util.atomic import read_json
from data_modules.util.errors import DataError

VALUE_KINDS = ("number", "amount", "rating", "count", "duration")


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


def read_modalities_meta(path: str | Path) -> list[ModalityMeta]:
    """Parse ``modalities.json``; every problem names the file and the entry."""
    path = Path(path)
    raw = read_json(path)
    if isinstance(raw, dict):
        raw = [{"name": name, **(body or {})} for name, body in raw.items()]
    if not isinstance(raw, list):
        raise DataError(path, "expected a list of modality objects or a mapping name -> object")
    out, seen = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise DataError(path, "entry has no 'name'", row=i, expected="an object with a non-empty name")
        check_name(item["name"], path, row=i)  # it names vocab/<name>.parquet and vectors/<name>.npy
        unknown = set(item) - {"name", "description", "unit", "value_kind"}
        if unknown:
            raise DataError(
                path,
                f"unknown fields {sorted(unknown)}",
                row=item["name"],
                expected="name, description, unit, value_kind",
            )
        kind = item.get("value_kind", "number")
        if kind not in VALUE_KINDS:
            raise DataError(
                path, f"value_kind '{kind}'", row=item["name"], expected=f"one of {list(VALUE_KINDS)}"
            )
        for key in ("description", "unit"):
            if not isinstance(item.get(key, ""), str):
                raise DataError(path, f"'{key}' is not a string", row=item["name"])
        if item["name"] in seen:
            raise DataError(path, "duplicate modality", row=item["name"])
        seen.add(item["name"])
        out.append(ModalityMeta(item["name"], item.get("description", ""), item.get("unit", ""), kind))
    return out


def resolve_modalities_meta(
    path: str | Path | None, event_mods: Iterable[str], valued: Mapping[str, int]
) -> dict[str, ModalityMeta]:
    """Metadata for every event modality: the file's entries (checked against the data), plain defaults otherwise.

    ``valued``: modality -> events with a non-null value, for every modality present in the events.
    """
    event_mods = list(event_mods)
    given = {m.name: m for m in read_modalities_meta(path)} if path is not None else {}
    for name, meta in given.items():
        if name not in event_mods or name not in valued:
            raise DataError(
                path, f"names modality '{name}', which is not among the data's event modalities",
                row=name, expected=f"one of {sorted(set(event_mods) & set(valued))}",
            )  # fmt: skip
        if (meta.unit or meta.value_kind != "number") and not valued[name]:
            raise DataError(
                path, f"modality '{name}' has a unit/value_kind but its events carry no values",
                row=name, expected="a 'value' column with numbers for this modality, or no unit",
            )  # fmt: skip
    return {m: given.get(m, ModalityMeta(m)) for m in event_mods}


def meta_to_json(meta: dict[str, ModalityMeta]) -> dict[str, dict]:
    return {name: asdict(m) for name, m in meta.items()}


def meta_from_json(raw: dict[str, dict] | None) -> dict[str, ModalityMeta]:
    return {name: ModalityMeta(**body) for name, body in (raw or {}).items()}
