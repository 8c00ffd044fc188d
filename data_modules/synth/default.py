"""The default (stationary) synthetic world: Poisson histories and futures whose rates drift per
user, so a label is behaviour, never a formula of the traits.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from data_modules.synth.catalogue import (
    BAND_NAMES,
    CATALOG,
    FUTURE_DAYS,
    HISTORY_DAYS,
    START,
    TRAITS,
    band_index,
    tabular_features,
)


def generate(
    n_users: int, seed: int, *, activity: float = 1.0, lead_days: int = 0
) -> tuple[pa.Table, pa.Table]:
    """Return (events, users) tables for ``n_users`` users; deterministic in ``seed``.

    ``activity`` scales every event rate (use ~4 to fill the paper's event caps); ``lead_days``
    lengthens the past (at the history's rates) before the last ``HISTORY_DAYS`` and the future.
    """
    past_days = HISTORY_DAYS + lead_days
    rng = np.random.default_rng(seed)
    n_act = len(CATALOG)
    traits = rng.standard_normal((n_users, len(TRAITS)))
    loadings = np.array([[a.loadings.get(t, 0.0) for t in TRAITS] for a in CATALOG])  # [A, T]
    base = np.log(np.array([a.rate for a in CATALOG]) * activity)
    # Per user-activity idiosyncrasy (taste not explained by traits) and a future drift.
    log_rate = base + traits @ loadings.T * 0.9 + 0.5 * rng.standard_normal((n_users, n_act))
    future_log_rate = log_rate + 0.6 * rng.standard_normal((n_users, n_act))
    hist_counts = rng.poisson(np.exp(log_rate) * past_days)
    fut_counts = rng.poisson(np.exp(future_log_rate) * FUTURE_DAYS)

    counts = np.concatenate([hist_counts.ravel(), fut_counts.ravel()])
    n_cells = n_users * n_act
    cell = np.repeat(np.arange(2 * n_cells), counts)
    is_future = cell >= n_cells
    cell = cell % n_cells
    user_idx, act_idx = cell // n_act, cell % n_act
    n_events = cell.size

    # Each user has a favourite item per activity, chosen 70% of the time.
    n_items = np.array([len(a.items) for a in CATALOG])
    favourite = (rng.random((n_users, n_act)) * n_items).astype(np.int64)
    pick_fav = rng.random(n_events) < 0.7
    item_idx = np.where(
        pick_fav, favourite[user_idx, act_idx], (rng.random(n_events) * n_items[act_idx]).astype(np.int64)
    )

    # Amounts: log-normal around the activity's median, shifted by wealth.
    median = np.array([a.amount or 0.0 for a in CATALOG])
    wealth = traits[:, TRAITS.index("wealth")]
    amount = median[act_idx] * np.exp(0.25 * wealth[user_idx] + 0.5 * rng.standard_normal(n_events))
    has_amount = median[act_idx] > 0
    band = band_index(amount)

    # Render texts through a small lookup table of distinct (activity, item, band) strings.
    text_table, offsets = [], np.zeros(n_act + 1, dtype=np.int64)
    for i, a in enumerate(CATALOG):
        bands = BAND_NAMES if a.amount else ("",)
        for item in a.items:
            for b in bands:
                text_table.append(a.template.format(item=item, band=b))
        offsets[i + 1] = len(text_table)
    n_bands = np.array([len(BAND_NAMES) if a.amount else 1 for a in CATALOG])
    text_idx = offsets[act_idx] + item_idx * n_bands[act_idx] + np.where(has_amount, band, 0)

    day = np.where(is_future, past_days, 0) + rng.random(n_events) * np.where(
        is_future, FUTURE_DAYS, past_days
    )
    start_us = int(START.replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    ts = start_us + (day * 86_400_000_000).astype(np.int64)

    order = np.lexsort((act_idx, ts, user_idx))  # per user, chronological; stable for ties
    user_ids = np.array([f"u{i:07d}" for i in range(n_users)])
    events = pa.table(
        {
            "user_id": pa.array(user_ids[user_idx[order]]),
            "modality": pa.DictionaryArray.from_arrays(
                pa.array(act_idx[order].astype(np.int32)), pa.array([a.modality for a in CATALOG])
            ).cast(pa.string()),
            "ts": pa.array(ts[order], type=pa.timestamp("us")),
            "text": pa.DictionaryArray.from_arrays(
                pa.array(text_idx[order].astype(np.int32)), pa.array(text_table)
            ).cast(pa.string()),
            "category": pa.DictionaryArray.from_arrays(
                pa.array(act_idx[order].astype(np.int32)), pa.array([a.category for a in CATALOG])
            ).cast(pa.string()),
            "value": pa.array(
                np.where(has_amount, np.round(amount, 2), np.nan)[order], mask=~has_amount[order]
            ),
        }
    )
    users = pa.table({"user_id": pa.array(user_ids), **tabular_features(rng, traits)})
    return events, users
