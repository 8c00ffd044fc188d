"""The **stats** stage of one partition: what must be merged across partitions.

stats: one streaming pass over the raw events keeps the partition's rows (checked, cleaned,
spooled locally); then the time windows, the kept users in hash order, the history vocabulary
counts, per shard the events the model sees (capped) and their counts, and the exact tabular moments.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from data_modules.builder.events import clean_events, empty_events, spool_events
from data_modules.builder.moments import exact_moments
from data_modules.builder.plan import BuildPlan, WorkFolder, publish_dir
from data_modules.dataset.manifest import file_entry
from data_modules.supervision.pairs import mark_seen
from data_modules.util.atomic import write_json
from data_modules.util.hashing import stable_hash64
from data_modules.util.partition import PartitionSpec, in_partition
from data_modules.util.skips import count_skip

log = logging.getLogger(__name__)


def _partition_rows(work: WorkFolder, spec: PartitionSpec) -> pl.LazyFrame:
    """The rows every scatter task filed for partition ``spec`` (none: an empty frame)."""
    files = sorted(work.root.glob(f"scatter-*/file-*/part={spec.index}/*.parquet"))
    return pl.scan_parquet(files) if files else empty_events()


def run_stats(plan: BuildPlan, work: WorkFolder, spec: PartitionSpec) -> None:
    """The stats pass of one partition into ``work`` (skipped if already done for this plan)."""
    out = work.stats_dir(spec)
    if spec.index not in work.missing(plan, "stats"):
        log.warning("partition %s: stats already done, skipped", spec.name)
        return
    if plan.partitions > 1:
        work.require(plan, "scatter")
    publish_dir(lambda folder: _stats_into(plan, spec, folder, work), out)


def _stats_into(plan: BuildPlan, spec: PartitionSpec, out: Path, work: WorkFolder) -> None:
    cfg = plan.config
    owned = in_partition(spec)
    skipped: dict[str, int] = {}
    previous = plan.previous_state()
    previous_rows = previous.kept_events(Path(plan.previous), spec) if previous else None
    keep_to = out / "kept.parquet" if cfg.get("refreshable", False) else None
    clean_options = dict(window_start=plan.cutoff_time - dt.timedelta(days=cfg["history_days"]),
                         kept=previous_rows, keep_to=keep_to)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=work.root, prefix=".spool-") as spool:
        if plan.partitions == 1:  # one process: read the raw files directly
            events = spool_events([Path(p) for p in plan.events], plan.event_mods, owned, Path(spool), skipped,
                                  cfg["max_text_chars"], **clean_options)  # fmt: skip
        else:
            events = clean_events(_partition_rows(work, spec), Path(spool), skipped, cfg["max_text_chars"],
                                  **clean_options)  # fmt: skip
        events, windows = _cut_windows(events, plan.cutoff_time, cfg, skipped)
        # no users table: the plan refused a 'tabular' modality, so there is nothing to read
        users = plan.raw.users.read(bool(plan.features), owned)[0] if plan.raw.users is not None else None
        kept = _select_users(events, users, skipped)
        kept = _assign_shards(kept, cfg["users_per_shard"])
        _history_combos(events).write_parquet(out / "combos.parquet")
        # events by shard (streaming), then the seen flags one shard at a time
        part_dir = Path(spool) / "by_shard"
        events.join(kept.lazy().select("user_id", "shard"), on="user_id", how="inner").sink_parquet(
            pl.PartitionBy(part_dir, key="shard", include_key=True), mkdir=True
        )
        seen_parts = []
        (out / "events").mkdir()
        for folder in sorted(part_dir.glob("shard=*")):
            k = int(folder.name.split("=")[1])
            ev = mark_seen(pl.read_parquet(folder / "*.parquet"), plan.caps)
            ev.write_parquet(out / "events" / f"shard-{k:05d}.parquet")
            seen_parts.append(
                ev.filter((pl.col("window") == "history") & pl.col("seen"))
                .group_by("modality", "text", "category")
                .len()
            )
    seen = (
        pl.concat(seen_parts).group_by("modality", "text", "category").agg(pl.col("len").sum().alias("count"))
        if seen_parts
        else pl.DataFrame(
            schema={"modality": pl.String, "text": pl.String, "category": pl.String, "count": pl.UInt32}
        )
    )
    seen.write_parquet(out / "seen.parquet")
    kept.write_parquet(out / "users.parquet")
    moments = exact_moments(
        kept.select(plan.features).to_numpy() if plan.features else np.zeros((kept.height, 0))
    )
    write_json(
        out / "stats.json",
        {"fingerprint": plan.fingerprint, "users": kept.height, "shards": int(kept["shard"].max() + 1) if kept.height else 0,
         "windows": windows, "skipped": skipped, "moments": moments,
         "kept": file_entry(out, "kept.parquet", pq.ParquetFile(keep_to).metadata.num_rows) if keep_to else None},
    )  # fmt: skip


def _cut_windows(
    events: pl.LazyFrame, cutoff: dt.datetime, cfg: dict, skipped: dict[str, int]
) -> tuple[pl.LazyFrame, dict[str, int]]:
    """History [cutoff - history_days, cutoff) and future [cutoff, cutoff + future_days); events
    outside both are a counted skip."""
    start = cutoff - dt.timedelta(days=cfg["history_days"])
    end = cutoff + dt.timedelta(days=cfg["future_days"])
    events = events.with_columns(
        pl.when(pl.col("ts") < start)
        .then(pl.lit("before"))
        .when(pl.col("ts") < cutoff)
        .then(pl.lit("history"))
        .when(pl.col("ts") < end)
        .then(pl.lit("future"))
        .otherwise(pl.lit("after"))
        .alias("window")
    )
    windows = {k: int(v) for k, v in events.group_by("window").len().collect().iter_rows()}
    outside = windows.get("before", 0) + windows.get("after", 0)
    count_skip(skipped, "events_outside_windows", outside, f"events outside [{start}, {end})")
    return events.filter(pl.col("window").is_in(["history", "future"])), windows


def _history_combos(events: pl.LazyFrame) -> pl.DataFrame:
    """(modality, text, category) -> count over the history window: the vocabularies' source."""
    return (
        events.filter(pl.col("window") == "history")
        .group_by("modality", "text", "category")
        .agg(pl.len().alias("count"))
        .collect()
    )


def _select_users(events: pl.LazyFrame, users: pl.DataFrame | None, skipped: dict[str, int]) -> pl.DataFrame:
    """Users with a users row (when a users table exists) and at least one history event."""
    per_user = (
        events.group_by("user_id")
        .agg((pl.col("window") == "history").sum().alias("n_history"), pl.len().alias("n_events"))
        .collect()
    )
    if users is None:
        base = per_user.select("user_id")
    else:
        unknown = per_user.join(users.select("user_id"), on="user_id", how="anti")
        count_skip(skipped, "events_of_unknown_users", int(unknown["n_events"].sum()),
                   "events of users missing from the users table")  # fmt: skip
        base = users
    joined = base.join(per_user, on="user_id", how="left").with_columns(
        pl.col("n_history", "n_events").fill_null(0)
    )
    no_events = joined.filter(pl.col("n_events") == 0).height
    no_history = joined.filter((pl.col("n_events") > 0) & (pl.col("n_history") == 0)).height
    count_skip(skipped, "users_without_events", no_events, "users with no events at all")
    count_skip(skipped, "users_without_history", no_history, "users with future events only")
    return joined.filter(pl.col("n_history") > 0).drop("n_history", "n_events")


def _assign_shards(kept: pl.DataFrame, users_per_shard: int) -> pl.DataFrame:
    """Users ordered by a stable hash of their id (ties by id), cut into equal runs: ``order`` and
    ``shard`` columns. Partitions are hash ranges, so this order continues across partitions."""
    ids = kept["user_id"].to_list()
    keys = np.array([stable_hash64(u, "big") for u in ids], dtype=np.uint64)
    order = np.lexsort((np.array(ids, dtype=object).astype(str), keys))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return kept.with_columns(pl.Series("shard", rank // users_per_shard), pl.Series("order", rank)).sort(
        "order"
    )
