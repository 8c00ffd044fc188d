"""Merging the partitions of a build: the statistics every shards task needs (vocabularies, tabular
mean/std, the topic pool) and, at the finish, the data set itself (shards, benchmarks, tokenizer,
manifest)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from data_modules.builder.moments import mean_std, merge_moments
from data_modules.builder.plan import BuildPlan, WorkFolder, publish_dir
from data_modules.supervision.pairs import topic_map, topic_pool
from data_modules.util.atomic import read_json, write_json
from data_modules.util.errors import DataError
from data_modules.util.partition import PartitionSpec

log = logging.getLogger(__name__)


@dataclass
class MergedStats:
    """What the partitions' stats passes add up to."""

    vocab: dict[str, pl.DataFrame]  # modality -> (id, text, count), most frequent first
    seen: pl.DataFrame  # seen history events per (modality, text, category)
    tab_stats: tuple[np.ndarray, np.ndarray]
    users: int
    shards: int
    windows: dict[str, int]
    skipped: dict[str, int]
    topics: tuple
    topic_source: str
    tmap: pl.DataFrame
    topic_means: np.ndarray

    @property
    def vocab_ids(self) -> pl.DataFrame:
        return pl.concat(
            [
                v.select(pl.lit(m).alias("modality"), pl.col("text"), pl.col("id").alias("vid"))
                for m, v in self.vocab.items()
            ]
        )


def merged_stats(plan: BuildPlan, work: WorkFolder) -> MergedStats:
    """Merge every partition's stats (cached in ``work/merged`` by the first task that needs it)."""
    work.require(plan, "stats")
    folder = work.merged_dir

    def current(path: Path) -> bool:
        marker = path / "merged.json"
        return marker.exists() and read_json(marker).get("fingerprint") == plan.fingerprint

    if not current(folder):
        publish_dir(lambda tmp: _merge_into(plan, work, tmp), folder, current)
    info = read_json(folder / "merged.json")
    vocab = {m: pl.read_parquet(folder / f"vocab-{i}.parquet") for i, m in enumerate(plan.event_mods)}
    seen = pl.read_parquet(folder / "seen.parquet")
    moments = info["moments"]
    mean, std = mean_std(moments, len(plan.features))
    topics, source = topic_pool(
        plan.raw.topics, plan.raw.paths.topics, plan.event_mods, seen, plan.modality_meta,
        plan.config["topic_categories"],
    )  # fmt: skip
    tmap, means = topic_map(seen, topics, info["users"])
    return MergedStats(
        vocab=vocab, seen=seen, tab_stats=(mean, std), users=info["users"], shards=info["shards"],
        windows=info["windows"], skipped=info["skipped"], topics=topics, topic_source=source, tmap=tmap,
        topic_means=means,
    )  # fmt: skip


def _merge_into(plan: BuildPlan, work: WorkFolder, out: Path) -> None:
    specs = [PartitionSpec(i, plan.partitions) for i in range(plan.partitions)]
    stats = [read_json(work.stats_dir(s) / "stats.json") for s in specs]
    combos = pl.concat([pl.read_parquet(work.stats_dir(s) / "combos.parquet") for s in specs])
    combos = combos.group_by("modality", "text", "category").agg(pl.col("count").sum())
    for i, m in enumerate(plan.event_mods):
        v = (
            combos.filter(pl.col("modality") == m)
            .group_by("text")
            .agg(pl.col("count").sum())
            .sort(["count", "text"], descending=[True, False])
            .with_row_index("id")
            .select(pl.col("id").cast(pl.Int32), "text", pl.col("count").cast(pl.Int64))
        )
        v.write_parquet(out / f"vocab-{i}.parquet")
    seen = (
        pl.concat(
            [pl.read_parquet(work.stats_dir(s) / "seen.parquet") for s in specs], how="vertical_relaxed"
        )
        .group_by("modality", "text", "category")
        .agg(pl.col("count").sum().cast(pl.Int64))
        .sort("modality", "text", "category", nulls_last=True)
    )
    seen.write_parquet(out / "seen.parquet")
    users = sum(s["users"] for s in stats)
    if users == 0:
        raise DataError(
            "events", "no user has any history event before the cutoff", expected="--cutoff inside the data"
        )
    write_json(
        out / "merged.json",
        {"fingerprint": plan.fingerprint, "users": users, "shards": sum(s["shards"] for s in stats),
         "windows": add_counts([s["windows"] for s in stats]), "skipped": add_counts([s["skipped"] for s in stats]),
         "moments": merge_moments([s["moments"] for s in stats])},
    )  # fmt: skip


def add_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter = Counter()
    for d in dicts:
        total.update(d)
    return dict(sorted(total.items()))
