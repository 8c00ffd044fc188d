"""The synthetic world: deterministic, behaviour-driven labels with varied base rates."""

import datetime as dt

import polars as pl

from data_modules.synth import world as synth


def _rates(events: pl.DataFrame, n_users: int) -> dict[str, float]:
    cutoff = synth.START + dt.timedelta(days=synth.HISTORY_DAYS)
    fut = events.filter(pl.col("ts") >= cutoff)
    return {
        s.name: fut.filter(pl.col("category").is_in(list(s.categories)))["user_id"].n_unique() / n_users
        for s in synth.SCENARIOS
    }


def test_same_seed_same_world_other_seed_other_world():
    a_ev, a_us = synth.generate(200, seed=3)
    b_ev, b_us = synth.generate(200, seed=3)
    c_ev, _ = synth.generate(200, seed=4)
    assert a_ev.equals(b_ev) and a_us.equals(b_us)
    assert not a_ev.equals(c_ev)


def test_4000_users_have_varied_base_rates_and_the_six_modalities():
    events, users = synth.generate(4000, seed=0)
    df = pl.from_arrow(events)
    assert users.num_rows == 4000
    assert set(df["modality"].unique()) == {"bill", "mini", "spm", "app", "search"}
    assert {"age", "balance_log", "credit_score"} <= set(users.column_names)
    rates = _rates(df, 4000)
    assert len(rates) == 10
    assert min(rates.values()) >= 0.02 and max(rates.values()) <= 0.6, rates
    assert max(rates.values()) / min(rates.values()) > 8  # about 3% to 50%


def test_labels_are_behaviour_not_a_formula_of_the_history():
    """History evidence predicts the future label but does not decide it."""
    events, _ = synth.generate(3000, seed=1)
    df = pl.from_arrow(events)
    cutoff = synth.START + dt.timedelta(days=synth.HISTORY_DAYS)
    cats = ["forest"]
    hist = set(df.filter((pl.col("ts") < cutoff) & pl.col("category").is_in(cats))["user_id"])
    fut = set(df.filter((pl.col("ts") >= cutoff) & pl.col("category").is_in(cats))["user_id"])
    users = set(df["user_id"])
    p_pos_given_hist = len(hist & fut) / len(hist)
    p_pos_given_none = len(fut - hist) / len(users - hist)
    assert p_pos_given_hist > 2 * p_pos_given_none  # evidence is informative
    assert 0 < p_pos_given_none and p_pos_given_hist < 1  # ... but not a rule


def test_lead_days_prepend_past_behaviour_and_move_the_cutoff(tmp_path):
    """A 30-day lead: events cover 150 days, the future starts at day 120, and the lead window has
    the history's daily rate (it is earlier history, not another regime)."""
    info = synth.write_world(tmp_path, n_users=400, seed=2, lead_days=30, n_files=1)
    cutoff = synth.START + dt.timedelta(days=synth.HISTORY_DAYS + 30)
    assert info["cutoff"] == cutoff.isoformat()
    df = pl.read_parquet(tmp_path / "events")
    day = (pl.col("ts") - pl.lit(synth.START)).dt.total_days()
    days = df.select(day.alias("d"))["d"]
    assert days.min() >= 0 and days.max() < 150 and (days >= 120).sum() > 0
    per_day_lead = (days < 30).sum() / 30
    per_day_history = ((days >= 30) & (days < 120)).sum() / 90
    assert abs(per_day_lead / per_day_history - 1) < 0.1
    assert synth.generate(50, seed=5, lead_days=0)[0].equals(synth.generate(50, seed=5)[0])
