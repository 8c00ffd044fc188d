"""One partition of a build: the **stats** pass (what must be merged across partitions) and the
**shards** pass (the partition's UserU rows, benchmark rows and QA report).

stats: one streaming pass over the raw events keeps the partition's rows (checked, cleaned,
spooled locally); then the time windows, the kept users in hash order, the history vocabulary
counts, per shard the events the model sees (capped) and their counts, and the exact tabular moments.

shards: with the merged vocabularies, tabular mean/std and topic pool, one shard at a time: the
rows, the QA pairs, the scenario positives; then the partition's benchmark rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.etl.build_plan import BuildPlan, WorkFolder, publish_dir
from data_modules.etl.manifest import file_entry
from data_modules.etl.partition import PartitionSpec, exact_moments, in_partition, owner_expr
from data_modules.etl.raw import (
    clean_events,
    count_skip,
    empty_events,
    read_external_qa,
    read_labels,
    read_users,
    scatter_events,
    spool_events,
)
from data_modules.etl.scenarios import Scenario
from data_modules.etl.schemas import BENCHMARK_SCHEMA, shard_schema
from data_modules.etl.supervision import QAReport, QASpec, Supervision, mark_seen
from data_modules.util.atomic import read_json, write_json, write_parquet
from data_modules.util.hashing import stable_fraction, stable_hash64

log = logging.getLogger(__name__)


# -- stats ----------------------------------------------------------------------------------------
def run_scatter(plan: BuildPlan, work: WorkFolder, spec: PartitionSpec) -> None:
    """The scatter pass of one task: its share of the raw files, read once, rows checked and filed
    by owning partition (skipped if already done for this plan)."""
    if spec.index not in work.missing(plan, "scatter"):
        log.warning("scatter %s: already done, skipped", spec.name)
        return
    files = {k: Path(plan.events[k]) for k in plan.scatter_files[spec.index]}

    def scatter_into(folder: Path) -> None:
        scatter_events(files, plan.event_mods, owner_expr(plan.partitions), folder)
        write_json(folder / "done.json", {"fingerprint": plan.fingerprint, "files": sorted(files)})

    publish_dir(scatter_into, work.scatter_dir(spec))


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
        users, _ = read_users(Path(plan.users) if plan.users else None, bool(plan.features), owned)
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


# -- shards ---------------------------------------------------------------------------------------
def run_shards(plan: BuildPlan, work: WorkFolder, spec: PartitionSpec, merged, workers: int = 1) -> None:
    """The shards pass of one partition into ``work`` (skipped if already done for this plan)."""
    if spec.index not in work.missing(plan, "shards"):
        log.warning("partition %s: shards already done, skipped", spec.name)
        return
    publish_dir(
        lambda folder: _shards_into(plan, work.stats_dir(spec), spec, merged, folder, workers),
        work.shards_dir(spec),
    )


def shard_name(spec: PartitionSpec, k: int) -> str:
    """A shard's path in the data set: the one-process build keeps its old names."""
    if spec.count == 1:
        return f"shards/shard-{k:05d}.parquet"
    return f"shards/part-{spec.index:05d}-shard-{k:05d}.parquet"


def _shards_into(plan: BuildPlan, stats: Path, spec: PartitionSpec, merged, out: Path, workers: int) -> None:
    cfg = plan.config
    owned = in_partition(spec)
    kept = pl.read_parquet(stats / "users.parquet")
    skipped: dict[str, int] = {}
    external = read_external_qa(Path(plan.qa), owned) if plan.qa else None
    if external is not None:
        known = external["user_id"].is_in(kept["user_id"].implode())
        count_skip(
            skipped, "qa_pairs_of_unknown_users", int((~known).sum()), "QA pairs of users not in the data set"
        )
    spec_qa = QASpec(
        history_days=cfg["history_days"], future_days=cfg["future_days"], future_bins=cfg["future_bins"],
        future_actions=cfg["future_actions"], topics_per_user=cfg["topics_per_user"],
        external_qa=cfg["external_qa"], timezone=cfg["timezone"],
    )  # fmt: skip
    job = _ShardJob(
        supervision=Supervision(spec_qa, merged.topics, merged.tmap, merged.topic_means, external, plan.cutoff_time,
                                plan.modality_meta, QAReport()),
        vocab_ids=merged.vocab_ids, event_mods=plan.event_mods, features=plan.features, tab_stats=merged.tab_stats,
        scenarios=plan.scenarios, row_group_size=cfg["row_group_size"], stats=stats, out=out,
        future_events=bool(cfg.get("future_events", False)),
    )  # fmt: skip
    shards = [(k, shard_name(spec, k), kept.filter(pl.col("shard") == k)) for k in range(_n_shards(kept))]
    scenarios = plan.scenarios
    positives: dict[str, set[str]] = {s.name: set() for s in scenarios}
    files, report = {}, QAReport()
    for name, entry, shard_positives, answers, dropped, emptied in _map_shards(job, shards, workers):
        files[name] = entry
        for scenario, users in shard_positives.items():
            positives[scenario].update(users)
        report.answers.update(answers)
        report.dropped.update(dropped)
        report.emptied += emptied
    labels = read_labels(Path(plan.labels), {s.name for s in scenarios}, owned) if plan.labels else None
    for s in scenarios:
        table = _benchmark_rows(
            s, kept, positives[s.name], labels, s.name in plan.labelled_scenarios, cfg, skipped
        )
        write_parquet(out / "bench" / f"{s.name}.parquet", table)
    write_json(
        out / "part.json",
        {"fingerprint": plan.fingerprint, "files": files, "skipped": skipped,
         "qa": {"answers": dict(report.answers), "dropped": dict(report.dropped), "emptied": report.emptied}},
    )  # fmt: skip


def _n_shards(kept: pl.DataFrame) -> int:
    return int(kept["shard"].max()) + 1 if kept.height else 0


@dataclass
class _ShardJob:
    """What every shard of a partition needs (sent once to each worker process)."""

    supervision: Supervision
    vocab_ids: pl.DataFrame
    event_mods: list[str]
    features: list[str]
    tab_stats: tuple
    scenarios: list[Scenario]
    row_group_size: int
    stats: Path
    out: Path
    future_events: bool = False

    def run(self, k: int, name: str, shard_users: pl.DataFrame) -> tuple:
        """Write shard ``k``; return (name, file entry, positives, QA answers, dropped, emptied)."""
        self.supervision.report = QAReport()
        ev = pl.read_parquet(self.stats / "events" / f"shard-{k:05d}.parquet")
        ev = ev.join(self.vocab_ids, on=["modality", "text"], how="left")
        table = build_shard(shard_users, ev, self.event_mods, self.features, self.tab_stats, self.supervision,
                            future_events=self.future_events)  # fmt: skip
        positives: dict[str, set[str]] = {s.name: set() for s in self.scenarios}
        _collect_positives(ev, self.scenarios, positives)
        write_parquet(self.out / name, table, row_group_size=self.row_group_size)
        r = self.supervision.report
        return (
            name,
            file_entry(self.out, name, table.num_rows),
            positives,
            dict(r.answers),
            dict(r.dropped),
            r.emptied,
        )


_WORKER_JOB: _ShardJob | None = None


def _init_worker(job: _ShardJob) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _run_in_worker(item: tuple) -> tuple:
    return _WORKER_JOB.run(*item)


def _map_shards(job: _ShardJob, shards: list[tuple], workers: int):
    """Each shard's result, in shard order: in this process, or over ``workers`` processes (the
    QA text is Python; shards are independent, so the result does not depend on ``workers``)."""
    workers = min(max(workers, 1), len(shards))
    if workers <= 1:
        yield from (job.run(*item) for item in shards)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # polars' threads do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.map(_run_in_worker, shards)


def build_shard(
    shard_users: pl.DataFrame,
    ev: pl.DataFrame,
    event_mods: list[str],
    features: list[str],
    tab_stats: tuple[np.ndarray, np.ndarray],
    supervision: Supervision,
    future_events: bool = False,
) -> pa.Table:
    """One shard's rows, in the shard's user order: the capped (seen) events, their times, values and
    categories per modality, the tabular vector and the QA pairs; with ``future_events``, also the
    future window's seen events (ids, times, categories: pretraining's future anchor)."""
    base = shard_users.select("user_id")
    hist = ev.filter(pl.col("window") == "history")
    seen = hist.filter(pl.col("seen"))
    columns: dict[str, pa.Array] = {"user_id": pa.array(base["user_id"].to_list(), pa.string())}
    totals = hist.group_by("user_id", "modality").agg(pl.len().cast(pl.Int32).alias("n"))
    for m in event_mods:
        seq = (
            seen.filter(pl.col("modality") == m)  # already sorted by user, time, content
            .group_by("user_id", maintain_order=True)
            .agg(
                pl.col("vid").cast(pl.Int32).alias("ids"),
                pl.col("ts").dt.cast_time_unit("ms").alias("ts"),
                pl.col("value").alias("val"),
                pl.col("category").alias("cat"),
            )
            .join(totals.filter(pl.col("modality") == m).drop("modality"), on="user_id", how="left")
        )
        seq = base.join(seq, on="user_id", how="left", maintain_order="left")
        columns[f"ev_{m}"] = seq["ids"].fill_null([]).to_arrow().cast(pa.list_(pa.int32()))
        columns[f"ts_{m}"] = seq["ts"].fill_null([]).to_arrow().cast(pa.list_(pa.timestamp("ms")))
        columns[f"val_{m}"] = seq["val"].fill_null([]).to_arrow().cast(pa.list_(pa.float64()))
        columns[f"cat_{m}"] = seq["cat"].fill_null([]).to_arrow().cast(pa.list_(pa.string()))
        columns[f"n_{m}"] = seq["n"].fill_null(0).to_arrow().cast(pa.int32())
    if future_events:
        columns |= _future_columns(base, ev, event_mods)
    if features:
        z = ((shard_users.select(features).to_numpy() - tab_stats[0]) / tab_stats[1]).astype(np.float32)
        columns["tabular"] = pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), len(features))
    else:
        columns["tabular"] = pa.array([[] for _ in range(base.height)], pa.list_(pa.float32()))

    pairs = supervision.pairs(base["user_id"].to_list(), ev)
    columns["qa_query"] = pa.array(pairs["query"], pa.list_(pa.string()))
    columns["qa_answer"] = pa.array(pairs["answer"], pa.list_(pa.string()))
    columns["qa_source"] = pa.array(pairs["source"], pa.list_(pa.string()))
    schema = shard_schema(event_mods, len(features), future_events)
    return pa.table(columns).cast(schema)


def _future_columns(base: pl.DataFrame, ev: pl.DataFrame, event_mods: list[str]) -> dict[str, pa.Array]:
    """Per modality, every future-window event of each user of ``base`` in time order (ties by text):
    vocabulary ids (-1 for a text the history never had), times, categories. Not capped like the
    history: "does the user do X within W days" must see the whole window (it is bounded by
    --future_days)."""
    fut = ev.filter(pl.col("window") == "future").sort("user_id", "ts", "text", "category", nulls_last=True)
    columns: dict[str, pa.Array] = {}
    for m in event_mods:
        seq = (
            fut.filter(pl.col("modality") == m)
            .group_by("user_id", maintain_order=True)
            .agg(
                pl.col("vid").fill_null(-1).cast(pl.Int32).alias("ids"),
                pl.col("ts").dt.cast_time_unit("ms").alias("ts"),
                pl.col("category").alias("cat"),
            )
        )
        seq = base.join(seq, on="user_id", how="left", maintain_order="left")
        columns[f"fut_ev_{m}"] = seq["ids"].fill_null([]).to_arrow().cast(pa.list_(pa.int32()))
        columns[f"fut_ts_{m}"] = seq["ts"].fill_null([]).to_arrow().cast(pa.list_(pa.timestamp("ms")))
        columns[f"fut_cat_{m}"] = seq["cat"].fill_null([]).to_arrow().cast(pa.list_(pa.string()))
    return columns


def _collect_positives(ev: pl.DataFrame, scenarios: list[Scenario], positives: dict[str, set[str]]) -> None:
    fut = ev.filter(pl.col("window") == "future")
    for s in scenarios:
        cond = pl.col("category").is_in(list(s.categories))
        if s.modalities:
            cond = cond & pl.col("modality").is_in(list(s.modalities))
        positives[s.name].update(fut.filter(cond)["user_id"].unique().to_list())


def _benchmark_rows(
    s: Scenario,
    kept: pl.DataFrame,
    positives: set[str],
    labels: pl.DataFrame | None,
    labelled: bool,
    cfg: dict,
    skipped: dict,
) -> pa.Table:
    """The partition's rows of scenario ``s``'s benchmark: given labels where the labels file has
    this scenario, else the rule's; a stable user-disjoint split."""
    ids = kept["user_id"].to_list()
    if labelled:  # the plan found this scenario in the labels file, so the partition read its rows
        given = labels.filter(pl.col("scenario") == s.name)
        known = given["user_id"].is_in(kept["user_id"].implode())
        count_skip(skipped, f"labels_of_unknown_users:{s.name}", int((~known).sum()),
                   f"labels of users not in the data set ({s.name})")  # fmt: skip
        given = given.filter(known)
        users, y = given["user_id"].to_list(), given["label"].to_numpy().astype(np.int8)
    else:
        users, y = ids, np.array([u in positives for u in ids], dtype=np.int8)
    split = [
        "test" if stable_fraction(f"{cfg['split_seed']}:{u}") < cfg["test_fraction"] else "train"
        for u in users
    ]
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "label": pa.array(y, pa.int8()),
            "split": pa.array(split, pa.string()),
        },
        schema=BENCHMARK_SCHEMA,
    )


def read_part(work: WorkFolder, spec: PartitionSpec) -> dict:
    return read_json(work.shards_dir(spec) / "part.json")
