"""``qanchor synth --world dynamic``: a second synthetic world with three properties of real logs.

Same users, traits, activities, scenarios and label rule as the default world
(:mod:`data_modules.synth`); what differs was fixed before any model saw it and is not tuned:

(a) **trends**: every user-activity rate follows its own exponential trend through history and
    future (a random slope with s.d. ln 2 / 120 per day: over 120 days a rate may double or
    halve), so recent weeks say more than the whole-window average;
(b) **triggers**: some events raise the chance of others within days, across modalities
    (:data:`TRIGGERS`: a concert search before a concert ticket, a loan search before a risky
    app, a new payee before a fraud hold, ...);
(c) **a long tail of texts**: merchants, mini-program items and searches carry a name drawn from a
    Zipf-distributed pool of 64,000 made-up words, so most event texts occur at most twice.
"""

from __future__ import annotations

import datetime as dt
import math

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

#: (trigger category, triggered category, probability, within days)
TRIGGERS: tuple[tuple[str, str, float, float], ...] = (
    ("search_concert", "concert", 0.25, 7.0),
    ("concert_page", "concert", 0.15, 7.0),
    ("search_food", "takeout", 0.3, 2.0),
    ("search_promo", "big_sale", 0.3, 3.0),
    ("search_value", "value_deals", 0.3, 3.0),
    ("search_brand", "brand_campaign", 0.25, 5.0),
    ("search_forest", "forest", 0.3, 3.0),
    ("search_loan", "app_risky", 0.2, 5.0),
    ("app_risky", "fraud_flag", 0.1, 10.0),
    ("risky_transfer", "fraud_flag", 0.1, 7.0),
    ("inbound_transfers", "aml_flag", 0.1, 10.0),
    ("community", "app_social", 0.1, 1.0),
)
TREND_SD = math.log(2) / 120  # per day
LONG_TAIL_MODALITIES = ("bill", "mini", "search")
_SYLLABLES = ("ka", "lo", "mi", "ren", "sha", "tu", "vex", "zor", "bel", "dan", "fi", "gor", "hal", "jin",
              "kel", "mor", "nu", "pax", "qui", "ros", "sel", "tam", "ul", "vin", "wen", "xo", "yas", "zed",
              "bro", "cal", "dor", "eli", "fen", "gal", "hov", "ira", "jun", "kor", "lum", "nox")  # fmt: skip


def _tail_words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` names from a Zipf(1.1) pool of 40^3 = 64,000 three-syllable words."""
    k = len(_SYLLABLES)
    idx = (rng.zipf(1.1, size=n) - 1) % (k**3)
    # a fixed random permutation of the pool, so the frequent words are not all "kaka..."
    perm = np.random.default_rng(12345).permutation(k**3)
    idx = perm[idx]
    return [
        (_SYLLABLES[i // (k * k)] + _SYLLABLES[(i // k) % k] + _SYLLABLES[i % k]).capitalize()
        for i in idx.tolist()
    ]


def _event_times(rng: np.random.Generator, log_rate: np.ndarray, slope: np.ndarray, days: float):
    """Events of inhomogeneous Poisson processes with rate exp(a + s t) on [0, days): (cell, t)."""
    s = slope.ravel()
    flat = np.abs(s) < 1e-12
    safe = np.where(flat, 1.0, s)
    mass = np.exp(log_rate.ravel()) * np.where(flat, days, np.expm1(safe * days) / safe)
    counts = rng.poisson(mass)
    cell = np.repeat(np.arange(s.size), counts)
    u = rng.random(cell.size)
    sc, fc = safe[cell], flat[cell]
    t = np.where(fc, u * days, np.log1p(u * np.expm1(sc * days)) / sc)
    return cell, np.clip(t, 0.0, np.nextafter(days, 0))


def generate_dynamic(
    n_users: int, seed: int, *, activity: float = 1.0, lead_days: int = 0
) -> tuple[pa.Table, pa.Table]:
    """(events, users) of the dynamic world; deterministic in ``seed``."""
    past_days = HISTORY_DAYS + lead_days
    days = float(past_days + FUTURE_DAYS)
    rng = np.random.default_rng(seed)
    n_act = len(CATALOG)
    traits = rng.standard_normal((n_users, len(TRAITS)))
    loadings = np.array([[a.loadings.get(t, 0.0) for t in TRAITS] for a in CATALOG])
    base = np.log(np.array([a.rate for a in CATALOG]) * activity)
    log_rate = base + traits @ loadings.T * 0.9 + 0.5 * rng.standard_normal((n_users, n_act))
    slope = TREND_SD * rng.standard_normal((n_users, n_act))
    # the process runs from day 0; its level at the history's start is the default world's rate
    cell, t = _event_times(rng, log_rate - slope * (past_days - HISTORY_DAYS), slope, days)
    user_idx, act_idx = cell // n_act, cell % n_act

    index = {a.category: i for i, a in enumerate(CATALOG)}
    new_users, new_acts, new_times = [user_idx], [act_idx], [t]
    for src, dst, p, within in TRIGGERS:
        fire = (act_idx == index[src]) & (rng.random(act_idx.size) < p)
        when = t[fire] + rng.random(int(fire.sum())) * within
        keep = when < days
        new_users.append(user_idx[fire][keep])
        new_acts.append(np.full(int(keep.sum()), index[dst]))
        new_times.append(when[keep])
    user_idx, act_idx, t = (np.concatenate(x) for x in (new_users, new_acts, new_times))

    n_items = np.array([len(a.items) for a in CATALOG])
    favourite = (rng.random((n_users, n_act)) * n_items).astype(np.int64)
    pick_fav = rng.random(t.size) < 0.7
    item_idx = np.where(
        pick_fav, favourite[user_idx, act_idx], (rng.random(t.size) * n_items[act_idx]).astype(np.int64)
    )
    median = np.array([a.amount or 0.0 for a in CATALOG])
    wealth = traits[:, TRAITS.index("wealth")]
    amount = median[act_idx] * np.exp(0.25 * wealth[user_idx] + 0.5 * rng.standard_normal(t.size))
    has_amount = median[act_idx] > 0
    band = band_index(amount)
    words = _tail_words(rng, t.size)

    texts = []
    for a_i, it, b, w in zip(act_idx.tolist(), item_idx.tolist(), band.tolist(), words):
        a = CATALOG[a_i]
        item = a.items[it]
        if a.modality in LONG_TAIL_MODALITIES:
            item = f"{item} {w}" if a.modality != "search" else f"{item} {w.lower()}"
        texts.append(a.template.format(item=item, band=BAND_NAMES[b] if a.amount else ""))

    start_us = int(START.replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    ts = start_us + (t * 86_400_000_000).astype(np.int64)
    order = np.lexsort((act_idx, ts, user_idx))
    user_ids = np.array([f"u{i:07d}" for i in range(n_users)])
    events = pa.table(
        {
            "user_id": pa.array(user_ids[user_idx[order]]),
            "modality": pa.array([CATALOG[i].modality for i in act_idx[order].tolist()], pa.string()),
            "ts": pa.array(ts[order], type=pa.timestamp("us")),
            "text": pa.array([texts[i] for i in order.tolist()], pa.string()),
            "category": pa.array([CATALOG[i].category for i in act_idx[order].tolist()], pa.string()),
            "value": pa.array(
                np.where(has_amount, np.round(amount, 2), np.nan)[order], mask=~has_amount[order]
            ),
        }
    )
    users = pa.table({"user_id": pa.array(user_ids), **tabular_features(rng, traits)})
    return events, users
