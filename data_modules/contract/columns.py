"""The raw-log contract (what a user brings) and the UserU dataset layout, as pyarrow schemas.

Raw inputs (``qanchor build --raw DIR``)::

    DIR/events/*.parquet | DIR/events.parquet   user_id, modality, ts, text [, category, value]
    DIR/users.parquet                           user_id + numeric tabular feature columns
    DIR/scenarios.json                          name -> query, domain, rule
    DIR/modalities.json     (optional)          per modality: description, unit, value_kind
    DIR/topics.json         (optional)          the D_uqa topic pool (default: derived from the data)
    DIR/labels.parquet      (optional)          user_id, scenario, label (0/1)
    DIR/qa.parquet          (optional)          user_id, query, answer
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.util.errors import DataError

TABULAR = "tabular"


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_label(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_boolean(t)


@dataclass(frozen=True)
class ColumnRule:
    """One column of a raw table: its name, whether it must exist, and which types it accepts."""

    name: str
    accepts: Callable[[pa.DataType], bool]
    expected: str
    required: bool = True


EVENTS_COLUMNS = (
    ColumnRule("user_id", _is_string, "string"),
    ColumnRule("modality", _is_string, "string"),
    ColumnRule("ts", pa.types.is_timestamp, "timestamp"),
    ColumnRule("text", _is_string, "string"),
    ColumnRule("category", _is_string, "string", required=False),
    ColumnRule("value", _is_numeric, "a number", required=False),
)
LABELS_COLUMNS = (
    ColumnRule("user_id", _is_string, "string"),
    ColumnRule("scenario", _is_string, "string"),
    ColumnRule("label", _is_label, "integer 0/1"),
)
QA_COLUMNS = (
    ColumnRule("user_id", _is_string, "string"),
    ColumnRule("query", _is_string, "string"),
    ColumnRule("answer", _is_string, "string"),
)


def read_schema(path: str | Path) -> pa.Schema:
    """Read a parquet file's schema, turning a truncated or corrupt file into a DataError."""
    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise DataError(path, f"not a readable parquet file (truncated or corrupt?): {err}") from None


def check_columns(path: str | Path, schema: pa.Schema, rules: Iterable[ColumnRule]) -> None:
    """Fail with the file and column name if a required column is missing or any column is mistyped."""
    for rule in rules:
        idx = schema.get_field_index(rule.name)
        if idx < 0:
            if rule.required:
                raise DataError(path, "missing column", column=rule.name, expected=rule.expected)
            continue
        dtype = schema.field(idx).type
        if not rule.accepts(dtype):
            raise DataError(path, f"has type {dtype}", column=rule.name, expected=rule.expected)


def check_users_schema(path: str | Path, schema: pa.Schema) -> list[str]:
    """Validate the users table and return its tabular feature columns (every column but user_id)."""
    check_columns(path, schema, (ColumnRule("user_id", _is_string, "string"),))
    features = [name for name in schema.names if name != "user_id"]
    for name in features:
        dtype = schema.field(name).type
        if not _is_numeric(dtype):
            raise DataError(path, f"has type {dtype}", column=name, expected="a numeric tabular feature")
    return features


def event_modalities(modalities: Iterable[str]) -> list[str]:
    """The event-stream modalities of a modality list (all but ``tabular``)."""
    return [m for m in modalities if m != TABULAR]
