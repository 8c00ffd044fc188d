"""Reading and validating raw inputs: every problem is an error naming the file and column/row."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_modules.etl.schemas import (
    EVENTS_COLUMNS,
    LABELS_COLUMNS,
    QA_COLUMNS,
    TABULAR,
    check_columns,
    check_users_schema,
    read_schema,
)
from data_modules.util.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RawInputs:
    """Resolved paths of one raw data set (``--raw DIR`` plus optional per-file overrides)."""

    events: list[Path]
    users: Path | None
    scenarios: Path
    labels: Path | None = None
    qa: Path | None = None
    topics: Path | None = None
    modalities_meta: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def locate(
        cls,
        raw: str | Path | None,
        *,
        events: str | Path | None = None,
        users: str | Path | None = None,
        scenarios: str | Path | None = None,
        labels: str | Path | None = None,
        qa: str | Path | None = None,
        topics: str | Path | None = None,
        modalities_meta: str | Path | None = None,
    ) -> RawInputs:
        raw = Path(raw) if raw is not None else None

        def pick(explicit, *names):
            if explicit is not None:
                return Path(explicit)
            if raw is None:
                return None
            for name in names:
                if (raw / name).exists():
                    return raw / name
            return None

        events_path = pick(events, "events", "events.parquet")
        if events_path is None:
            raise DataError(
                raw or "<no --raw>", "no events found", expected="events/*.parquet or events.parquet"
            )
        if events_path.is_dir():
            files = sorted(events_path.glob("*.parquet"))
            if not files:
                raise DataError(events_path, "directory holds no *.parquet files")
        elif events_path.exists():
            files = [events_path]
        else:
            raise DataError(events_path, "file not found")
        scen = pick(scenarios, "scenarios.json")
        if scen is None:
            raise DataError(raw or "<no --raw>", "no scenarios.json found")
        return cls(
            events=files,
            users=pick(users, "users.parquet"),
            scenarios=scen,
            labels=pick(labels, "labels.parquet"),
            qa=pick(qa, "qa.parquet"),
            topics=pick(topics, "topics.json"),
            modalities_meta=pick(modalities_meta, "modalities.json"),
        )


def count_skip(skipped: dict[str, int], key: str, n: int, message: str) -> None:
    """Record a documented, counted skip (saved in the manifest) and log it."""
    if n:
        skipped[key] = skipped.get(key, 0) + int(n)
        log.warning("skipped %d %s", n, message)


def check_timezone(name: str) -> str:
    """An IANA time zone name, or a DataError naming the option."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DataError(
            "--timezone", f"unknown time zone '{name}'", expected="an IANA name such as UTC or Europe/Berlin"
        ) from None
    return name


def _utc_naive(moment: dt.datetime, tz: str) -> dt.datetime:
    """A naive local time in ``tz`` (or an aware time) as naive UTC, the events' own clock."""
    import zoneinfo

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(tz))
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def resolve_cutoff(text: str, tz: str) -> dt.datetime:
    """``--cutoff`` as naive UTC; a time without an offset is local time in ``tz``."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            "--cutoff", f"'{text}' is not an ISO date/time", expected="e.g. 2026-03-01 or 2026-03-01T00:00"
        ) from None
    return _utc_naive(moment, tz)


def infer_modalities(inputs: RawInputs) -> list[str]:
    """The modalities a build uses when none are given: ``modalities.json``'s order if present, else
    every modality in the events (sorted), plus ``tabular`` when the users table has features."""
    from data_modules.etl.modality_meta import read_modalities_meta

    if inputs.modalities_meta is not None:
        mods = [m.name for m in read_modalities_meta(inputs.modalities_meta)]
    else:
        found: set[str] = set()
        for path in inputs.events:
            check_columns(path, read_schema(path), EVENTS_COLUMNS[:2])
            found |= set(
                pl.scan_parquet(path)
                .select(pl.col("modality").cast(pl.String))
                .unique()
                .collect()["modality"]
                .drop_nulls()
            )
        mods = sorted(found)
    if inputs.users is not None and len(read_schema(inputs.users).names) > 1:
        mods.append(TABULAR)
    return mods


def scan_events(inputs: RawInputs, event_mods: list[str], max_text_chars: int = 1000) -> pl.LazyFrame:
    """Validate every events file and return one lazy frame with a uniform schema.

    Checks per file: readable parquet with valid UTF-8 text, required columns with the right types,
    no nulls in user_id/modality/ts/text, no empty user_id, finite values, every modality known.
    Counted, not errors: empty files (skipped), texts longer than ``max_text_chars`` (cut there: a
    megabyte without a space would stall any tokenizer), exact duplicate events (dropped: a log
    shipped twice must not count twice).
    """
    frames = []
    for path in inputs.events:
        schema = read_schema(path)
        check_columns(path, schema, EVENTS_COLUMNS)
        try:
            n_rows = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(path, f"corrupt parquet metadata: {err}") from None
        if n_rows == 0:
            count_skip(inputs.skipped, "empty_event_files", 1, f"empty events file {path}")
            continue
        lf = pl.scan_parquet(path)
        ts_type = schema.field("ts").type
        ts = pl.col("ts")
        if ts_type.tz is not None:
            ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        lf = lf.select(
            pl.col("user_id").cast(pl.String),
            pl.col("modality").cast(pl.String),
            ts.dt.cast_time_unit("us").alias("ts"),
            pl.col("text").cast(pl.String),
            (
                pl.col("category").cast(pl.String) if "category" in schema.names else pl.lit(None, pl.String)
            ).alias("category"),
            (pl.col("value").cast(pl.Float64) if "value" in schema.names else pl.lit(None, pl.Float64)).alias(
                "value"
            ),
        )
        _check_event_rows(path, lf, event_mods)
        frames.append(lf)
    if not frames:
        raise DataError(inputs.events[0].parent, "every events file is empty")
    events = pl.concat(frames, how="vertical")
    long_text = pl.col("text").str.len_chars() > max_text_chars
    n_rows, n_long = events.select(pl.len(), long_text.sum()).collect().row(0)
    count_skip(
        inputs.skipped, "event_texts_truncated", n_long, f"event texts cut to {max_text_chars} characters"
    )
    events = events.with_columns(pl.col("text").str.slice(0, max_text_chars))
    events = events.unique(maintain_order=True)
    n_unique = events.select(pl.len()).collect().item()
    count_skip(inputs.skipped, "duplicate_events", n_rows - n_unique, "exact duplicate events")
    return events


def _check_event_rows(path: Path, lf: pl.LazyFrame, event_mods: list[str]) -> None:
    value = pl.col("value")
    any_problem = pl.any_horizontal(
        *(pl.col(c).is_null() for c in ("user_id", "ts", "text", "modality")),
        pl.col("user_id").str.strip_chars() == "",
        value.is_not_null() & (value.is_nan() | value.is_infinite()),
        ~pl.col("modality").is_in(event_mods),
    )
    try:
        bad = lf.with_row_index("row").filter(any_problem).head(1).collect()
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(path, f"unreadable rows ({first})", expected="parquet with UTF-8 text") from None
    if bad.height == 0:
        return
    row = bad.row(0, named=True)
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


def read_users(path: Path | None, use_tabular: bool) -> tuple[pl.DataFrame | None, list[str]]:
    """Read and validate the users table: unique ids, numeric features, all finite.

    Returns (users frame with user_id + features as Float64, feature names).
    """
    if path is None:
        if use_tabular:
            raise DataError("users.parquet", "file not found (needed for the 'tabular' modality)")
        return None, []
    schema = read_schema(path)
    features = check_users_schema(path, schema)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(path, f"not a readable parquet file (truncated or corrupt?): {err}") from None
    ids = table.column("user_id")
    if ids.null_count:
        row = int(np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))[0])
        raise DataError(path, "null user_id", column="user_id", row=row)
    df = pl.from_arrow(table).with_columns(pl.col("user_id").cast(pl.String))
    empty = df.with_row_index("row").filter(pl.col("user_id").str.strip_chars() == "").head(1)
    if empty.height:
        raise DataError(
            path, "empty user_id", column="user_id", row=empty["row"][0], expected="a non-empty id"
        )
    dup = df.with_row_index("row").filter(pl.col("user_id").is_duplicated()).head(2)
    if dup.height:
        r = dup.row(1, named=True)
        raise DataError(path, f"duplicate user_id '{r['user_id']}'", column="user_id", row=r["row"])
    if use_tabular:
        df = df.with_columns([pl.col(c).cast(pl.Float64) for c in features])
        for c in features:
            bad = df.with_row_index("row").filter(~pl.col(c).is_finite() | pl.col(c).is_null()).head(1)
            if bad.height:
                r = bad.row(0, named=True)
                raise DataError(
                    path,
                    f"non-finite tabular value {r[c]} for user '{r['user_id']}'",
                    column=c,
                    row=r["row"],
                    expected="a finite number",
                )
    return df.select("user_id", *(features if use_tabular else [])), features if use_tabular else []


def read_labels(path: Path, scenario_names: set[str]) -> pl.DataFrame:
    """Read the optional labels file: (user_id, scenario) unique, label in {0, 1}, scenario known."""
    schema = read_schema(path)
    check_columns(path, schema, LABELS_COLUMNS)
    df = pl.read_parquet(path, columns=["user_id", "scenario", "label"]).with_row_index("row")
    df = df.with_columns(
        pl.col("user_id").cast(pl.String), pl.col("scenario").cast(pl.String), pl.col("label").cast(pl.Int64)
    )
    for c in ("user_id", "scenario"):
        empty = df.filter(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")).head(1)
        if empty.height:
            raise DataError(path, "empty value", column=c, row=empty["row"][0])
    bad = df.filter(~pl.col("label").is_in([0, 1]) | pl.col("label").is_null()).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataError(path, f"label {r['label']}", column="label", row=r["row"], expected="0 or 1")
    unknown = df.filter(~pl.col("scenario").is_in(sorted(scenario_names))).head(1)
    if unknown.height:
        r = unknown.row(0, named=True)
        raise DataError(
            path,
            f"unknown scenario '{r['scenario']}'",
            column="scenario",
            row=r["row"],
            expected=f"one of {sorted(scenario_names)}",
        )
    dup = df.filter(pl.struct("user_id", "scenario").is_duplicated()).head(2)
    if dup.height:
        r = dup.row(1, named=True)
        raise DataError(path, f"duplicate label for user '{r['user_id']}' in '{r['scenario']}'", row=r["row"])
    return df.drop("row")


def read_external_qa(path: Path) -> pl.DataFrame:
    """Read externally generated QA pairs (e.g. from an LLM); null or empty texts are errors."""
    schema = read_schema(path)
    check_columns(path, schema, QA_COLUMNS)
    df = pl.read_parquet(path, columns=["user_id", "query", "answer"]).with_row_index("row")
    df = df.with_columns([pl.col(c).cast(pl.String) for c in ("user_id", "query", "answer")])
    for c in ("user_id", "query", "answer"):
        bad = df.filter(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")).head(1)
        if bad.height:
            raise DataError(path, "empty value", column=c, row=bad["row"][0])
    return df.drop("row")


def default_cutoff(
    events: pl.LazyFrame, future_days: int, tz: str = "UTC", min_day_share: float = 0.1
) -> tuple[dt.datetime, str]:
    """The last *busy* day's local midnight after, minus the future window: the newest data is the
    future (naive UTC), and why. A day is busy when it has at least ``min_day_share`` of the median
    events per active day: a few stray late events (a clock gone wrong, one late upload) do not
    move the cutoff past the data, which would leave every label 0."""
    import zoneinfo

    zone = zoneinfo.ZoneInfo(tz)
    days = (
        events.select(
            pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone(tz).dt.date().alias("day")
        )
        .group_by("day")
        .len()
        .sort("day")
        .collect()
    )
    threshold = max(1.0, min_day_share * float(days["len"].median()))
    busy = days.filter(pl.col("len") >= threshold)
    last_day = busy["day"][-1]
    later = int(days.filter(pl.col("day") > last_day)["len"].sum())
    day_after = dt.datetime.combine(last_day, dt.time()) + dt.timedelta(days=1)
    cutoff = _utc_naive((day_after - dt.timedelta(days=future_days)).replace(tzinfo=zone), tz)
    why = (f"last busy day {last_day} ({tz}) minus the {future_days}-day future window"
           + (f"; {later} later events on sparse days left out of that choice" if later else ""))  # fmt: skip
    return cutoff, why
