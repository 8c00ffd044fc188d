"""The build's clock: time zones, the cutoff given or chosen from the busy days."""

from __future__ import annotations

import datetime as dt

import polars as pl

from data_modules.util.errors import DataError


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
