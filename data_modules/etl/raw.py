"""Reading and validating raw inputs: every problem is an error naming the file and column/row."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

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
            # flat or partitioned folders (events/day=2026-03-01/*.parquet); hidden files are not data
            files = sorted(
                f
                for f in events_path.rglob("*.parquet")
                if not any(part.startswith(".") for part in f.relative_to(events_path).parts)
            )
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


def infer_modalities(inputs: RawInputs, found: set[str]) -> list[str]:
    """The modalities a build uses when none are given: ``modalities.json``'s order if present, else
    every modality ``found`` in the events (sorted), plus ``tabular`` when the users table has
    features."""
    from data_modules.etl.modality_meta import read_modalities_meta

    if inputs.modalities_meta is not None:
        mods = [m.name for m in read_modalities_meta(inputs.modalities_meta)]
    else:
        mods = sorted(found)
    if inputs.users is not None and len(read_schema(inputs.users).names) > 1:
        mods.append(TABULAR)
    return mods


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


def read_users(
    path: Path | None, use_tabular: bool, owned: pl.Expr | None = None
) -> tuple[pl.DataFrame | None, list[str]]:
    """Read and validate the users table (the rows ``owned`` keeps, e.g. a partition's): ids present,
    non-empty and unique, numeric features, all finite.

    Returns (users frame with user_id + features as Float64, feature names).
    """
    if path is None:
        if use_tabular:
            raise DataError("users.parquet", "file not found (needed for the 'tabular' modality)")
        return None, []
    schema = read_schema(path)
    features = check_users_schema(path, schema)
    lf = pl.scan_parquet(path, row_index_name="row").with_columns(pl.col("user_id").cast(pl.String))
    try:
        df = lf.filter(owned if owned is not None else pl.lit(True)).collect()
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable parquet file (truncated or corrupt?): {err}") from None
    null = df.filter(pl.col("user_id").is_null()).head(1)
    if null.height:
        raise DataError(path, "null user_id", column="user_id", row=null["row"][0])
    empty = df.filter(pl.col("user_id").str.strip_chars() == "").head(1)
    if empty.height:
        raise DataError(
            path, "empty user_id", column="user_id", row=empty["row"][0], expected="a non-empty id"
        )
    dup = df.filter(pl.col("user_id").is_duplicated()).head(2)
    if dup.height:
        r = dup.row(1, named=True)
        raise DataError(path, f"duplicate user_id '{r['user_id']}'", column="user_id", row=r["row"])
    if use_tabular:
        df = df.with_columns([pl.col(c).cast(pl.Float64) for c in features])
        for c in features:
            bad = df.filter(~pl.col(c).is_finite() | pl.col(c).is_null()).head(1)
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


def _scan_rows(path: Path, columns: list[str], owned: pl.Expr | None) -> pl.DataFrame:
    """``columns`` of the rows ``owned`` keeps (all without it), with their row number in the file."""
    lf = pl.scan_parquet(path, row_index_name="row").select("row", *columns)
    return lf.filter(owned if owned is not None else pl.lit(True)).collect()


def read_labels(path: Path, scenario_names: set[str], owned: pl.Expr | None = None) -> pl.DataFrame:
    """Read the optional labels file (the rows ``owned`` keeps): (user_id, scenario) unique, label in
    {0, 1}, scenario known."""
    schema = read_schema(path)
    check_columns(path, schema, LABELS_COLUMNS)
    df = _scan_rows(path, ["user_id", "scenario", "label"], owned)
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


def read_external_qa(path: Path, owned: pl.Expr | None = None) -> pl.DataFrame:
    """Read externally generated QA pairs (e.g. from an LLM; the rows ``owned`` keeps); null or empty
    texts are errors."""
    schema = read_schema(path)
    check_columns(path, schema, QA_COLUMNS)
    df = _scan_rows(path, ["user_id", "query", "answer"], owned)
    df = df.with_columns([pl.col(c).cast(pl.String) for c in ("user_id", "query", "answer")])
    for c in ("user_id", "query", "answer"):
        bad = df.filter(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")).head(1)
        if bad.height:
            raise DataError(path, "empty value", column=c, row=bad["row"][0])
    return df.drop("row")


def day_counts(events: pl.LazyFrame, tz: str = "UTC") -> pl.DataFrame:
    """Raw events per local day in ``tz`` (day, len), sorted: what the default cutoff is chosen from.
    A refresh adds the new files' counts to the previous build's (:func:`add_day_counts`)."""
    return (
        events.select(
            pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone(tz).dt.date().alias("day")
        )
        .group_by("day")
        .len()
        .sort("day")
        .collect()
    )


def add_day_counts(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([a, b], how="vertical_relaxed").group_by("day").agg(pl.col("len").sum()).sort("day")


def default_cutoff(
    days: pl.DataFrame, future_days: int, tz: str = "UTC", min_day_share: float = 0.1
) -> tuple[dt.datetime, str]:
    """The last *busy* day's local midnight after, minus the future window: the newest data is the
    future (naive UTC), and why. ``days``: :func:`day_counts` of the raw events. A day is busy when
    it has at least ``min_day_share`` of the median events per active day: a few stray late events
    (a clock gone wrong, one late upload) do not move the cutoff past the data, which would leave
    every label 0."""
    import zoneinfo

    zone = zoneinfo.ZoneInfo(tz)
    threshold = max(1.0, min_day_share * float(days["len"].median()))
    busy = days.filter(pl.col("len") >= threshold)
    last_day = busy["day"][-1]
    later = int(days.filter(pl.col("day") > last_day)["len"].sum())
    day_after = dt.datetime.combine(last_day, dt.time()) + dt.timedelta(days=1)
    cutoff = _utc_naive((day_after - dt.timedelta(days=future_days)).replace(tzinfo=zone), tz)
    why = (f"last busy day {last_day} ({tz}) minus the {future_days}-day future window"
           + (f"; {later} later events on sparse days left out of that choice" if later else ""))  # fmt: skip
    return cutoff, why
