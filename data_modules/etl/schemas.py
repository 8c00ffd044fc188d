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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.util.errors import DataError

SCHEMA_VERSION = 2  # 2: seen events' values and categories (val_*, cat_*) in shards

#: The paper's six modalities; ``tabular`` is the users table, the rest are event streams.
PAPER_MODALITIES: tuple[str, ...] = ("bill", "mini", "spm", "app", "search", "tabular")
TABULAR = "tabular"
#: Event caps of the authors' code (most recent events kept per modality).
PAPER_CAPS: dict[str, int] = {"bill": 250, "mini": 150, "spm": 150, "app": 100, "search": 10}
#: Smaller default caps that keep the tiny CPU backbone's sequences short.
DEFAULT_CAPS: dict[str, int] = {"bill": 32, "mini": 16, "spm": 16, "app": 16, "search": 8}
FALLBACK_CAP = 32


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


def shard_schema(event_mods: list[str], n_tabular: int, future_events: bool = False) -> pa.Schema:
    """Schema of one UserU shard row (one user); ``future_events``: with the future window's seen
    events (pretraining data only)."""
    fields: list[pa.Field] = [pa.field("user_id", pa.string(), nullable=False)]
    for m in event_mods:
        fields += [
            pa.field(f"ev_{m}", pa.list_(pa.int32())),
            pa.field(f"ts_{m}", pa.list_(pa.timestamp("ms"))),
            pa.field(f"val_{m}", pa.list_(pa.float64())),
            pa.field(f"cat_{m}", pa.list_(pa.string())),
            pa.field(f"n_{m}", pa.int32()),
        ]
    for m in event_mods if future_events else ():
        fields += [
            pa.field(f"fut_ev_{m}", pa.list_(pa.int32())),  # -1: a text the history vocabulary lacks
            pa.field(f"fut_ts_{m}", pa.list_(pa.timestamp("ms"))),
            pa.field(f"fut_cat_{m}", pa.list_(pa.string())),
        ]
    fields += [
        pa.field("tabular", pa.list_(pa.float32(), n_tabular) if n_tabular else pa.list_(pa.float32())),
        pa.field("qa_query", pa.list_(pa.string())),
        pa.field("qa_answer", pa.list_(pa.string())),
        pa.field("qa_source", pa.list_(pa.string())),
    ]
    return pa.schema(fields)


BENCHMARK_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
VOCAB_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)
