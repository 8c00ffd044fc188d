"""The UserU data set's own format: shard, vocabulary and benchmark schemas, event caps."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: seen events' values and categories (val_*, cat_*) in shards


#: The paper's six modalities; ``tabular`` is the users table, the rest are event streams.
PAPER_MODALITIES: tuple[str, ...] = ("bill", "mini", "spm", "app", "search", "tabular")


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
