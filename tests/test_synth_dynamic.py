"""The dynamic world has each property it promises (trends, triggers, a long tail), checked on its events."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from data_modules.synth.catalogue import START
from data_modules.synth.default import generate
from data_modules.synth.dynamic import generate_dynamic

LEAD = 30  # history days 30-120, future 120-150, as in the demo


@pytest.fixture(scope="module")
def worlds():
    return {name: pl.from_arrow(gen(1500, seed=5, lead_days=LEAD)[0]) for name, gen in
            (("default", generate), ("dynamic", generate_dynamic))}  # fmt: skip


def _day(ev: pl.DataFrame) -> pl.DataFrame:
    return ev.with_columns(((pl.col("ts") - pl.lit(START)).dt.total_seconds() / 86400).alias("day"))


def _recent_vs_old(ev: pl.DataFrame) -> tuple[float, float]:
    """Correlation over (user, category) of the future count with the last / first 30 history days."""
    d = _day(ev)
    windows = {"old": (LEAD, LEAD + 30), "recent": (LEAD + 60, LEAD + 90), "future": (LEAD + 90, LEAD + 120)}
    counts = None
    for name, (lo, hi) in windows.items():
        c = (
            d.filter((pl.col("day") >= lo) & (pl.col("day") < hi))
            .group_by("user_id", "category")
            .len()
            .rename({"len": name})
        )
        counts = (
            c if counts is None else counts.join(c, on=["user_id", "category"], how="full", coalesce=True)
        )
    counts = counts.fill_null(0).filter(
        pl.col("category").is_in(["grocery", "transit", "app_social", "app_shopping"])
    )
    x = {k: np.log1p(counts[k].to_numpy()) for k in windows}
    return float(np.corrcoef(x["recent"], x["future"])[0, 1]), float(np.corrcoef(x["old"], x["future"])[0, 1])


def test_trends_make_recent_weeks_more_telling(worlds):
    recent, old = _recent_vs_old(worlds["dynamic"])
    assert recent - old > 0.03, (recent, old)
    recent0, old0 = _recent_vs_old(worlds["default"])  # stationary: both windows tell the same
    assert abs(recent0 - old0) < 0.02, (recent0, old0)


def test_a_concert_search_raises_the_chance_of_a_concert_ticket_within_a_week(worlds):
    def after_over_before(ev: pl.DataFrame) -> float:
        """Tickets in the 7 days after a user's concert search / in the 7 days before it: the same
        users either way, so a taste for concerts cancels and only the trigger remains."""
        d = _day(ev)
        searches = d.filter(pl.col("category") == "search_concert").select(
            "user_id", pl.col("day").alias("s")
        )
        tickets = d.filter(pl.col("category") == "concert").select("user_id", pl.col("day").alias("c"))
        pairs = searches.join(tickets, on="user_id").filter(
            (pl.col("s") > 7) & (pl.col("s") < d["day"].max() - 7)
        )
        after = pairs.filter((pl.col("c") >= pl.col("s")) & (pl.col("c") < pl.col("s") + 7)).height
        before = pairs.filter((pl.col("c") < pl.col("s")) & (pl.col("c") >= pl.col("s") - 7)).height
        return after / max(before, 1)

    assert after_over_before(worlds["dynamic"]) > 3.0
    assert 0.5 < after_over_before(worlds["default"]) < 2.0


def test_most_texts_are_rare(worlds):
    def rare_share(ev: pl.DataFrame) -> float:
        d = _day(ev).filter((pl.col("day") >= LEAD) & (pl.col("day") < LEAD + 90))
        return float((d.group_by("text").len()["len"] <= 2).mean())

    assert rare_share(worlds["dynamic"]) > 0.5 > 0.1 > rare_share(worlds["default"])


def test_same_seed_same_world_inside_its_span():
    a, b = generate_dynamic(50, seed=1)[0], generate_dynamic(50, seed=1)[0]
    assert a.equals(b) and not a.equals(generate_dynamic(50, seed=2)[0])
    ts = a.column("ts").to_pylist()
    assert min(ts) >= START and max(ts) < START + dt.timedelta(days=120)
