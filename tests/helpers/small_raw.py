"""A five-event raw data set (three users, one scenario) and its build, for bad-input and fault tests."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.scenarios import Scenario, save_scenarios

CUT = dt.datetime(2026, 4, 1)


def events_table(**override):
    cols = {
        "user_id": ["a", "a", "b", "b", "c"],
        "modality": ["bill", "app", "bill", "search", "bill"],
        "ts": pa.array([CUT - dt.timedelta(days=d) for d in (1, 2, 3, 4, 5)], pa.timestamp("us")),
        "text": ["Paid 5 CNY at X", "Used app Y", "Paid 7 CNY at X", "Searched 'z'", "Paid 9 CNY at X"],
        "category": ["shop", "apps", "shop", "search", "shop"],
        "value": [5.0, None, 7.0, None, 9.0],
    }
    cols.update(override)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def users_table(**override):
    cols = {"user_id": ["a", "b", "c"], "age": [30, 40, 50], "balance": [1.0, 2.0, 3.0]}
    cols.update(override)
    return pa.table(cols)


def write_raw(tmp_path, events=None, users=None):
    raw = tmp_path / "raw"
    (raw / "events").mkdir(parents=True, exist_ok=True)
    pq.write_table(events if events is not None else events_table(), raw / "events" / "part-0.parquet")
    pq.write_table(users if users is not None else users_table(), raw / "users.parquet")
    save_scenarios(raw / "scenarios.json", [Scenario("Shop", "Will the user shop?", "Retail", ("shop",))])
    return raw


def build_small(raw, tmp_path, **kw):
    """Build it (three users cannot give every scenario both labels in train and test)."""
    kw.setdefault("min_class_users", 0)
    return build(
        BuildConfig(
            raw=str(raw), out=str(tmp_path / "data"), cutoff=CUT.isoformat(), tokenizer_vocab=300, **kw
        )
    )
