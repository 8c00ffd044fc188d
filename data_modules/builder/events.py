"""The build's passes over the raw events: one streaming read, every row checked, cleaned and counted."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from data_modules.contract.columns import (
    EVENTS_COLUMNS,
    check_columns,
    read_schema,
)
from data_modules.util.errors import DataError
from data_modules.util.skips import count_skip


def _uniform_events(path: Path, schema: pa.Schema, lf: pl.LazyFrame) -> pl.LazyFrame:
    """One events file's columns in the build's uniform types (ts as naive UTC, microseconds)."""
    ts = pl.col("ts")
    if schema.field("ts").type.tz is not None:
        ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    names = schema.names
    return lf.with_columns(
        pl.col("user_id").cast(pl.String),
        pl.col("modality").cast(pl.String),
        ts.dt.cast_time_unit("us").alias("ts"),
        pl.col("text").cast(pl.String),
        (pl.col("category").cast(pl.String) if "category" in names else pl.lit(None, pl.String)).alias(
            "category"
        ),
        (pl.col("value").cast(pl.Float64) if "value" in names else pl.lit(None, pl.Float64)).alias("value"),
    )


def scan_event_columns(files: list[Path]) -> pl.LazyFrame:
    """All events files as one lazy frame (modality, ts, value), unvalidated: the plan's cheap pass
    (only these columns are read)."""
    frames = []
    for path in files:
        schema = read_schema(path)
        check_columns(path, schema, EVENTS_COLUMNS)
        frames.append(_uniform_events(path, schema, pl.scan_parquet(path)).select("modality", "ts", "value"))
    return pl.concat(frames, how="vertical")


def _problem(event_mods: list[str]) -> pl.Expr:
    value = pl.col("value")
    return pl.any_horizontal(
        *(pl.col(c).is_null() for c in ("user_id", "ts", "text", "modality")),
        pl.col("user_id").str.strip_chars() == "",
        value.is_not_null() & (value.is_nan() | value.is_infinite()),
        ~pl.col("modality").is_in(event_mods),
    ).alias("problem")


_EVENT_COLUMNS = ["user_id", "modality", "ts", "text", "category", "value"]


def _checked_file(path: Path, k: int, event_mods: list[str]) -> pl.LazyFrame:
    """Events file ``k`` in uniform types with its row numbers and a ``problem`` flag per row."""
    schema = read_schema(path)
    check_columns(path, schema, EVENTS_COLUMNS)
    lf = _uniform_events(path, schema, pl.scan_parquet(path, row_index_name="row"))
    return lf.select(*_EVENT_COLUMNS, _problem(event_mods), pl.col("row"), pl.lit(k).alias("file"))


def _sink(lf: pl.LazyFrame, target, path: Path) -> None:
    try:
        lf.sink_parquet(target, mkdir=True)
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(path, f"unreadable rows ({first})", expected="parquet with UTF-8 text") from None


def empty_events() -> pl.LazyFrame:
    """No events, in the uniform types, with the check's columns."""
    schema = {"user_id": pl.String, "modality": pl.String, "ts": pl.Datetime("us"), "text": pl.String,
              "category": pl.String, "value": pl.Float64, "problem": pl.Boolean}  # fmt: skip
    return pl.LazyFrame(schema=schema)


def _check_rows(rows: pl.LazyFrame, files: dict[int, Path], event_mods: list[str]) -> None:
    bad = rows.filter("problem").head(1).collect()
    if bad.height:
        row = bad.row(0, named=True)
        _raise_event_problem(files[row["file"]], row, event_mods)


def scatter_events(files: dict[int, Path], event_mods: list[str], partition_of, out: Path) -> None:
    """The map side of a partitioned build: read ``files`` (index -> path: this task's share of the
    raw events) once, check every row (errors name file, column and row), and write each row under
    ``out/file-K/part=I/`` for the partition ``I`` that owns its user (``partition_of``: an
    expression). Each stats task then reads only its own partition's rows."""
    for k, path in sorted(files.items()):
        lf = _checked_file(path, k, event_mods).with_columns(partition_of.alias("part"))
        _sink(lf, pl.PartitionBy(out / f"file-{k:06d}", key="part", include_key=False), path)
    written = sorted(out.glob("file-*/part=*/*.parquet"))
    if written:
        _check_rows(pl.scan_parquet(written), files, event_mods)


def spool_events(
    files: list[Path],
    event_mods: list[str],
    owned: pl.Expr,
    spool: Path,
    skipped: dict[str, int],
    max_text_chars: int = 1000,
    **clean_options,
) -> pl.LazyFrame:
    """One streaming pass over the raw events: the rows ``owned`` keeps, in uniform types, checked
    (errors name file, column and row: unreadable or non-UTF-8 files, nulls in user_id, modality,
    ts or text, an empty user_id, a non-finite value, an unknown modality), then cleaned (see
    :func:`clean_events`, which takes ``clean_options``) into ``spool``. Memory is bounded by what
    ``owned`` keeps."""
    spool.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(files):
        _sink(_checked_file(path, k, event_mods).filter(owned), spool / f"raw-{k:06d}.parquet", path)
    parts = sorted(spool.glob("raw-*.parquet"))
    raw = pl.scan_parquet(parts) if parts else empty_events()  # a refresh may bring no new file
    _check_rows(raw, dict(enumerate(files)), event_mods)
    return clean_events(raw, spool, skipped, max_text_chars, **clean_options)


def clean_events(
    raw: pl.LazyFrame,
    spool: Path,
    skipped: dict[str, int],
    max_text_chars: int = 1000,
    *,
    window_start: dt.datetime | None = None,
    kept: pl.LazyFrame | None = None,
    keep_to: Path | None = None,
) -> pl.LazyFrame:
    """Checked events -> ``spool/events.parquet``, counted: texts longer than ``max_text_chars`` are
    cut there (a megabyte without a space would stall any tokenizer), exact duplicate events from
    ``window_start`` on are dropped (a log shipped twice must not count twice; events before the
    window are not used and are counted as outside it, duplicates or not).

    A refresh: ``kept``, the previous build's events from its window start on (cut and counted
    before, duplicates still in), joins the new rows; ``keep_to`` receives this build's events from
    its window start on, duplicates still in, for the next refresh. So the duplicates of the window a
    build uses are always counted afresh, the same however the raw files arrived."""
    long_text = pl.col("text").str.len_chars() > max_text_chars
    n_rows, n_long = raw.select(pl.len(), long_text.sum()).collect().row(0)
    count_skip(skipped, "event_texts_truncated", n_long, f"event texts cut to {max_text_chars} characters")
    clean = raw.select(*_EVENT_COLUMNS).with_columns(pl.col("text").str.slice(0, max_text_chars))
    if kept is not None:
        n_rows += kept.select(pl.len()).collect().item()
        clean = pl.concat([kept.select(*_EVENT_COLUMNS), clean], how="vertical")
    in_use = pl.lit(True) if window_start is None else pl.col("ts") >= window_start
    if keep_to is not None:
        clean.filter(in_use).sink_parquet(keep_to)
    pl.concat([clean.filter(in_use).unique(maintain_order=True), clean.filter(~in_use)]).sink_parquet(
        spool / "events.parquet"
    )
    for part in spool.glob("raw-*.parquet"):
        part.unlink()
    events = pl.scan_parquet(spool / "events.parquet")
    n_written = events.select(pl.len()).collect().item()
    count_skip(skipped, "duplicate_events", n_rows - n_written, "exact duplicate events")
    return events


def _raise_event_problem(path: Path, row: dict, event_mods: list[str]) -> None:
    for col in ("user_id", "ts", "text", "modality"):
        if row[col] is None:
            raise DataError(path, "null value", column=col, row=row["row"])
    if not row["user_id"].strip():
        raise DataError(path, "empty user_id", column="user_id", row=row["row"], expected="a non-empty id")
    if row["value"] is not None and not np.isfinite(row["value"]):
        raise DataError(
            path,
            f"non-finite value {row['value']}",
            column="value",
            row=row["row"],
            expected="a finite number or null",
        )
    raise DataError(
        path,
        f"unknown modality '{row['modality']}'",
        column="modality",
        row=row["row"],
        expected=f"one of {event_mods} (set --modalities or modalities.json to use others)",
    )
