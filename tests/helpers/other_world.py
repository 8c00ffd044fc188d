"""A generated non-payment raw data set: movie ratings and a fitness log, in the raw-log contract.

Titles are chosen to trap substring topic matching ("The Hunger Games", "The Dark Knight", "Pay It
Forward"); values are stars and minutes, never money. Users have a taste for genres and a fitness
habit; the scenario labels are behaviour in the label window, as in the built-in world.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MOVIES = {
    "Action": ["The Dark Knight", "Mad Max: Fury Road", "Heat", "Die Hard"],
    "Drama": ["Pay It Forward", "The Shawshank Redemption", "12 Angry Men", "Forrest Gump"],
    "Sci-Fi": ["The Hunger Games", "Arrival", "Blade Runner 2049", "The Matrix"],
    "Comedy": ["Groundhog Day", "Superbad", "The Grand Budapest Hotel"],
}
WORKOUTS = {"running": "Ran", "cycling": "Cycled", "yoga": "Did yoga for", "swimming": "Swam"}
START = dt.datetime(2025, 1, 1)
DAYS = 150

MODALITIES_META = [
    {"name": "rate", "description": "movie ratings", "value_kind": "rating", "unit": "stars"},
    {"name": "workout", "description": "workouts", "value_kind": "duration", "unit": "minutes"},
]
SCENARIOS = [
    {"name": "Drama", "query": "Will the user rate a drama?", "domain": "Movies", "rule": {"categories": ["Drama"], "modalities": ["rate"]}},
    {"name": "SciFi", "query": "Will the user watch science fiction?", "domain": "Movies", "rule": {"categories": ["Sci-Fi"]}},
    {"name": "Runner", "query": "Will the user go running?", "domain": "Fitness", "rule": {"categories": ["running"], "modalities": ["workout"]}},
]  # fmt: skip


def write_other_world(out: str | Path, n_users: int = 240, seed: int = 3, *, meta: bool = True) -> Path:
    """Write events/, users.parquet, scenarios.json (and modalities.json when ``meta``) under ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    genres, kinds = list(MOVIES), list(WORKOUTS)
    rows: dict[str, list] = {k: [] for k in ("user_id", "modality", "ts", "text", "category", "value")}
    ages, tenure = [], []
    for i in range(n_users):
        uid = f"viewer{i:04d}"
        taste = rng.dirichlet(np.ones(len(genres)) * 0.5)
        sport = rng.dirichlet(np.ones(len(kinds)) * 0.5)
        movie_rate, sport_rate = rng.gamma(2.0, 0.08), rng.gamma(2.0, 0.06)
        for day in range(DAYS):
            drift = 1.0 + 0.5 * np.sin(day / 40 + i)
            for _ in range(rng.poisson(movie_rate * drift)):
                g = genres[rng.choice(len(genres), p=taste)]
                title = MOVIES[g][rng.integers(len(MOVIES[g]))]
                stars = int(rng.integers(1, 6))
                _add(rows, uid, "rate", START + dt.timedelta(days=day, seconds=int(rng.integers(86400))),
                     f'Rated "{title}" {stars} stars', g, float(stars))  # fmt: skip
            for _ in range(rng.poisson(sport_rate * drift)):
                k = kinds[rng.choice(len(kinds), p=sport)]
                minutes = int(rng.integers(2, 13)) * 5
                _add(rows, uid, "workout", START + dt.timedelta(days=day, seconds=int(rng.integers(86400))),
                     f"{WORKOUTS[k]} {minutes} minutes", k, float(minutes))  # fmt: skip
        ages.append(int(rng.integers(18, 70)))
        tenure.append(float(rng.gamma(2.0, 200.0)))
    (out / "events").mkdir(parents=True, exist_ok=True)
    table = pa.table({**rows, "ts": pa.array(rows["ts"], pa.timestamp("us"))})
    pq.write_table(table, out / "events" / "part-00000.parquet")
    users = pa.table(
        {"user_id": [f"viewer{i:04d}" for i in range(n_users)], "age": ages, "tenure_days": tenure}
    )
    pq.write_table(users, out / "users.parquet")
    (out / "scenarios.json").write_text(json.dumps(SCENARIOS, indent=1))
    if meta:
        (out / "modalities.json").write_text(json.dumps(MODALITIES_META, indent=1))
    return out


def _add(rows, uid, modality, ts, text, category, value) -> None:
    for key, v in zip(
        ("user_id", "modality", "ts", "text", "category", "value"), (uid, modality, ts, text, category, value)
    ):
        rows[key].append(v)
