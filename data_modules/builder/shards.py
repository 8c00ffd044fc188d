"""The **shards** stage of one partition: with the merged vocabularies, tabular mean/std and topic
pool, one shard at a time: the UserU rows, the QA pairs, the scenario positives; then the
partition's benchmark rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from data_modules.builder.plan import BuildPlan, WorkFolder, publish_dir
from data_modules.contract.scenarios import Scenario
from data_modules.dataset.manifest import file_entry
from data_modules.dataset.schemas import BENCHMARK_SCHEMA, shard_schema
from data_modules.supervision.pairs import QAReport, QASpec, Supervision
from data_modules.util.atomic import read_json, write_json, write_parquet
from data_modules.util.hashing import stable_fraction
from data_modules.util.partition import PartitionSpec, in_partition
from data_modules.util.skips import count_skip

log = logging.getLogger(__name__)


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
    raw = plan.raw
    external = raw.qa.read(owned) if raw.qa else None
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
    labels = raw.labels.read({s.name for s in scenarios}, owned) if raw.labels else None
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
