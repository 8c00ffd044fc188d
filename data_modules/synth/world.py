"""``qanchor synth``: write a synthetic world as a raw folder in the contract's shape (the built-in
data set for demos and tests): ``default`` (:mod:`data_modules.synth.default`) or ``dynamic``
(:mod:`data_modules.synth.dynamic`), both from :mod:`data_modules.synth.catalogue`.

An Alipay-like world. Every user has latent traits (appetite for takeout, culture, green habits, thrift, risk, ...). A
trait mix sets the user's daily rate for each *activity*; each activity lives in one modality and
renders events as text ("Paid 20-50 CNY at Meituan Takeout"). History (90 days) and future (30 days)
are drawn independently from Poisson processes whose future rates drift per user, so a scenario
label -- "triggers at least one target event in the future window" -- is behaviour, not a formula
of the traits: the history is evidence, never the answer.

``lead_days`` prepends that many days of behaviour at the history's rates, so that a model can be
pretrained on an earlier cutoff (its D_future window ends where the label window starts) and be
evaluated on labels it never saw: the demo's time split.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from data_modules.contract.scenarios import save_scenarios
from data_modules.contract.topics import save_topics
from data_modules.synth.catalogue import HISTORY_DAYS, MODALITY_META, SCENARIOS, START
from data_modules.synth.default import generate
from data_modules.synth.dynamic import generate_dynamic
from data_modules.synth.topics import WORLD_TOPICS
from data_modules.util.atomic import write_json, write_parquet

WORLDS = ("default", "dynamic")


@dataclass
class SynthConfig:
    """A synthetic raw data set: events, users, scenarios with labels, modalities, topics."""

    out: str
    """the raw folder to write"""
    users: int = 4000
    """number of users"""
    seed: int = 0
    """the world's seed"""
    activity: float = 1.0
    """scale every event rate (4 fills the paper's caps)"""
    files: int = 4
    """number of events parquet files"""
    lead_days: int = 0
    """extra days of past behaviour before the 90-day history (room for a pretraining cutoff)"""
    world: Literal["default", "dynamic"] = "default"
    """dynamic: trending rates, triggered events, long-tailed texts (data_modules/synth/dynamic.py)"""


def run_synth(cfg: SynthConfig) -> dict:
    """``qanchor synth``."""
    return write_world(cfg.out, cfg.users, cfg.seed, activity=cfg.activity, n_files=cfg.files,
                       lead_days=cfg.lead_days, world=cfg.world)  # fmt: skip


def write_world(
    out: str | Path,
    n_users: int,
    seed: int,
    *,
    activity: float = 1.0,
    n_files: int = 4,
    lead_days: int = 0,
    world: str = "default",
) -> dict:
    """Write ``events/part-*.parquet``, ``users.parquet``, ``scenarios.json``, ``modalities.json`` and
    ``topics.json`` under ``out``."""
    if lead_days < 0:
        raise ValueError(f"lead_days must be >= 0, got {lead_days}")
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    out = Path(out)
    if world == "dynamic":
        events, users = generate_dynamic(n_users, seed, activity=activity, lead_days=lead_days)
    else:
        events, users = generate(n_users, seed, activity=activity, lead_days=lead_days)
    per_file = -(-events.num_rows // n_files) if events.num_rows else 1
    for k in range(n_files):
        write_parquet(out / "events" / f"part-{k:05d}.parquet", events.slice(k * per_file, per_file))
    write_parquet(out / "users.parquet", users)
    save_scenarios(out / "scenarios.json", list(SCENARIOS))
    # the world's own metadata and topic pool: its text keeps its currency and life topics
    write_json(out / "modalities.json", [asdict(m) for m in MODALITY_META])
    save_topics(out / "topics.json", WORLD_TOPICS)
    cutoff = START + dt.timedelta(days=HISTORY_DAYS + lead_days)
    return {
        "users": n_users,
        "events": events.num_rows,
        "cutoff": cutoff.isoformat(),
        "out": str(out),
        "world": world,
    }
