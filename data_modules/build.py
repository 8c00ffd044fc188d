"""``qanchor build``: raw logs -> UserU dataset (shards, vocabularies, benchmarks, manifest).

The pipeline is lazy polars end to end; memory is bounded by one shard of users at a time:

1. validate every input (schemas, nulls, modalities, duplicate users, non-finite features);
2. split events at the cutoff into history / future and count what falls outside both windows;
3. keep users that have a users row and at least one history event (the rest are counted skips),
   assign them to shards by a stable hash;
4. vocabularies: distinct history texts per modality, most frequent first;
5. partition events by shard (a streaming sink); flag the events the model sees (the per-modality
   caps); from those alone, the topic pool (given or derived) and its report;
6. per shard: capped recent event ids (+ times, values, categories), the standardised tabular
   vector, the D_future answer, the k most relevant D_uqa topics and their answers, external QA
   pairs (see :mod:`data_modules.supervision`), and rule-based labels;
7. benchmarks with a user-disjoint split, the tokenizer, and finally ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from data_modules.atomic import write_parquet
from data_modules.errors import DataError
from data_modules.manifest import Manifest, file_entry
from data_modules.modality_meta import meta_to_json, resolve_modalities_meta
from data_modules.raw import (
    RawInputs,
    check_timezone,
    count_skip,
    default_cutoff,
    infer_modalities,
    read_external_qa,
    read_labels,
    read_users,
    resolve_cutoff,
    scan_events,
)
from data_modules.scenarios import Scenario, load_scenarios, save_scenarios
from data_modules.schemas import (
    BENCHMARK_SCHEMA,
    SCHEMA_VERSION,
    TABULAR,
    VOCAB_SCHEMA,
    event_modalities,
    resolve_caps,
    shard_schema,
)
from data_modules.splits import stable_fraction
from data_modules.supervision import (
    QAReport,
    QASpec,
    Supervision,
    mark_seen,
    seen_combos,
    topic_map,
    topic_pool,
    topic_report,
)
from data_modules.tokenizer import train_tokenizer
from data_modules.topics import save_topics


@dataclass
class BuildConfig:
    """Everything ``qanchor build`` can be told; saved verbatim in the manifest."""

    raw: str | None = None
    out: str = "data"
    events: str | None = None
    users: str | None = None
    scenarios: str | None = None
    labels: str | None = None
    qa: str | None = None
    topics: str | None = None
    modalities_meta: str | None = None
    modalities: tuple[str, ...] | None = (
        None  # None: modalities.json's order, else the events' (sorted) + tabular
    )
    timezone: str = "UTC"  # IANA name for calendar facts (days, weekends) and a naive --cutoff
    cutoff: str | None = None
    history_days: int = 90
    future_days: int = 30
    max_events: dict[str, int] = field(default_factory=dict)
    users_per_shard: int = 1024
    row_group_size: int = 256
    topics_per_user: int = 10
    topic_categories: int = 8  # derived pool: at most this many category topics per modality
    future_actions: int = 5
    future_bins: int = 3
    external_qa: str = "add"  # "add" beside the templated D_uqa, or "replace" it for users who have some
    test_fraction: float = 0.3
    split_seed: int = 0
    tokenizer_vocab: int = 4096


def build(cfg: BuildConfig) -> Manifest:
    """Run the whole build; returns the manifest written last to ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = RawInputs.locate(
        cfg.raw, events=cfg.events, users=cfg.users, scenarios=cfg.scenarios, labels=cfg.labels, qa=cfg.qa,
        topics=cfg.topics, modalities_meta=cfg.modalities_meta,
    )  # fmt: skip
    skipped = inputs.skipped
    tz = check_timezone(cfg.timezone)
    modalities = list(cfg.modalities) if cfg.modalities else infer_modalities(inputs)
    event_mods = event_modalities(modalities)
    if not event_mods:
        raise ValueError("modalities must name at least one event modality")
    caps = resolve_caps(modalities, cfg.max_events)
    use_tabular = TABULAR in modalities
    scenarios = load_scenarios(inputs.scenarios)

    events = scan_events(inputs, event_mods)
    users, features = read_users(inputs.users, use_tabular)
    labels = read_labels(inputs.labels, {s.name for s in scenarios}) if inputs.labels else None
    external = read_external_qa(inputs.qa) if inputs.qa else None
    per_modality = events.group_by("modality").agg(pl.col("value").count().alias("valued")).collect()
    valued = {m: int(n) for m, n in per_modality.iter_rows()}
    meta = resolve_modalities_meta(inputs.modalities_meta, event_mods, valued)

    cutoff = resolve_cutoff(cfg.cutoff, tz) if cfg.cutoff else default_cutoff(events, cfg.future_days, tz)
    start = cutoff - dt.timedelta(days=cfg.history_days)
    end = cutoff + dt.timedelta(days=cfg.future_days)
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
    windows = dict(events.group_by("window").len().collect().iter_rows())
    outside = windows.get("before", 0) + windows.get("after", 0)
    count_skip(skipped, "events_outside_windows", outside, f"events outside [{start}, {end})")
    events = events.filter(pl.col("window").is_in(["history", "future"]))

    kept = _select_users(events, users, skipped)
    shard_map = _assign_shards(kept, cfg.users_per_shard)
    n_shards = int(shard_map["shard"].max()) + 1
    events = events.join(shard_map.lazy().select("user_id", "shard"), on="user_id", how="inner")

    combos = (
        events.filter(pl.col("window") == "history")
        .group_by("modality", "text", "category")
        .agg(pl.len().alias("count"))
        .collect()
        .sort("modality", "text", "category", nulls_last=True)
    )
    vocab = _write_vocabs(out, combos, event_mods)
    tab_stats = _tabular_stats(kept, features)

    files: dict[str, dict] = {}
    for m, table in vocab.items():
        files[f"vocab/{m}.parquet"] = file_entry(out, f"vocab/{m}.parquet", table.height)
    positives: dict[str, set[str]] = {s.name: set() for s in scenarios}
    qa_report = QAReport()
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        part_dir = Path(tmp) / "by_shard"
        vocab_ids = pl.concat(
            [
                v.select(pl.lit(m).alias("modality"), pl.col("text"), pl.col("id").alias("vid"))
                for m, v in vocab.items()
            ]
        )
        (
            events.join(vocab_ids.lazy(), on=["modality", "text"], how="left").sink_parquet(
                pl.PartitionBy(part_dir, key="shard", include_key=True), mkdir=True
            )
        )
        shard_dirs = {int(p.name.split("=")[1]): p for p in part_dir.glob("shard=*")}

        def shard_events(k: int) -> pl.DataFrame | None:
            return mark_seen(pl.read_parquet(shard_dirs[k] / "*.parquet"), caps) if k in shard_dirs else None

        # Pass 1: what the model will see (capped events) decides the topic pool and its statistics.
        combos_seen = seen_combos([shard_events(k) for k in range(n_shards)])
        topics, topic_source = topic_pool(inputs.topics, event_mods, combos_seen, meta, cfg.topic_categories)
        tmap, topic_means = topic_map(combos_seen, topics, len(kept))
        qa_report.topics = topic_report(topics, topic_source, tmap, topic_means, combos_seen)
        spec = QASpec(
            history_days=cfg.history_days, future_days=cfg.future_days, future_bins=cfg.future_bins,
            future_actions=cfg.future_actions, topics_per_user=cfg.topics_per_user, external_qa=cfg.external_qa,
            timezone=cfg.timezone,
        )  # fmt: skip
        supervision = Supervision(spec, topics, tmap, topic_means, external, cutoff, meta, qa_report)
        # Pass 2: one shard at a time.
        for k in range(n_shards):
            shard_users = shard_map.filter(pl.col("shard") == k).sort("order")
            ev = shard_events(k)
            table = _build_shard(shard_users, ev, event_mods, features, tab_stats, supervision)
            _collect_positives(ev, scenarios, positives)
            name = f"shards/shard-{k:05d}.parquet"
            write_parquet(out / name, table, row_group_size=cfg.row_group_size)
            files[name] = file_entry(out, name, table.num_rows)
    count_skip(
        skipped,
        "qa_sentences_dropped_by_reflection",
        sum(qa_report.dropped.values()),
        "unsupported QA sentences",
    )
    qa_report.log()

    bench_counts = {}
    for s in scenarios:
        table = _benchmark(s, kept, positives[s.name], labels, cfg, skipped)
        name = f"benchmarks/{s.name}.parquet"
        write_parquet(out / name, table)
        files[name] = file_entry(out, name, table.num_rows)
        bench_counts[s.name] = {
            "users": table.num_rows,
            "positive_rate": round(
                float(np.mean(table.column("label").to_numpy())) if table.num_rows else 0.0, 4
            ),
            "source": "labels" if labels is not None and s.name in set(labels["scenario"]) else "rule",
        }
    save_scenarios(out / "scenarios.json", scenarios)
    files["scenarios.json"] = file_entry(out, "scenarios.json", len(scenarios))
    save_topics(out / "topics.json", topics)
    files["topics.json"] = file_entry(out, "topics.json", len(topics))

    tok_dir = train_tokenizer(
        out, sorted(files), cfg.tokenizer_vocab, extra_texts=[s.query for s in scenarios]
    )
    for p in sorted(tok_dir.iterdir()):
        rel = str(p.relative_to(out))
        files[rel] = file_entry(out, rel, None)

    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        modalities=modalities,
        event_modalities=event_mods,
        max_events=caps,
        tabular_features=features,
        tabular_mean=tab_stats[0].tolist(),
        tabular_std=tab_stats[1].tolist(),
        cutoff=cutoff.isoformat(),
        history_days=cfg.history_days,
        future_days=cfg.future_days,
        counts={
            "users": len(kept),
            "shards": n_shards,
            "history_events": int(windows.get("history", 0)),
            "future_events": int(windows.get("future", 0)),
            "vocab": {m: v.height for m, v in vocab.items()},
            "benchmarks": bench_counts,
        },
        skipped=dict(skipped),
        files=files,
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        encoders={},
        timezone=cfg.timezone,
        modality_meta=meta_to_json(meta),
        qa=qa_report.to_json(),
    )
    manifest.save(out)
    return manifest


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
        count_skip(
            skipped,
            "events_of_unknown_users",
            int(unknown["n_events"].sum()),
            "events of users missing from the users table",
        )
        base = users
    joined = base.join(per_user, on="user_id", how="left").with_columns(
        pl.col("n_history", "n_events").fill_null(0)
    )
    no_events = joined.filter(pl.col("n_events") == 0).height
    no_history = joined.filter((pl.col("n_events") > 0) & (pl.col("n_history") == 0)).height
    count_skip(skipped, "users_without_events", no_events, "users with no events at all")
    count_skip(skipped, "users_without_history", no_history, "users with future events only")
    kept = joined.filter(pl.col("n_history") > 0).drop("n_history", "n_events")
    if kept.height == 0:
        raise DataError(
            "events", "no user has any history event before the cutoff", expected="--cutoff inside the data"
        )
    return kept


def _assign_shards(kept: pl.DataFrame, users_per_shard: int) -> pl.DataFrame:
    """Stable, balanced shards: users ordered by a hash of their id, cut into equal runs.

    Returns ``kept`` with ``shard`` and ``order`` (position in the hash order) columns added."""
    ids = kept["user_id"].to_list()
    keys = np.array(
        [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "big") for u in ids],
        dtype=np.uint64,
    )
    order = np.lexsort((np.array(ids, dtype=object).astype(str), keys))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return kept.with_columns(pl.Series("shard", rank // users_per_shard), pl.Series("order", rank))


def _write_vocabs(out: Path, combos: pl.DataFrame, event_mods: list[str]) -> dict[str, pl.DataFrame]:
    vocab = {}
    for m in event_mods:
        v = (
            combos.filter(pl.col("modality") == m)
            .group_by("text")
            .agg(pl.col("count").sum())
            .sort(["count", "text"], descending=[True, False])
            .with_row_index("id")
            .select(pl.col("id").cast(pl.Int32), "text", pl.col("count").cast(pl.Int64))
        )
        write_parquet(out / f"vocab/{m}.parquet", v.to_arrow().cast(VOCAB_SCHEMA))
        vocab[m] = v
    return vocab


def _tabular_stats(kept: pl.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if not features:
        return np.zeros(0), np.ones(0)
    x = kept.select(features).to_numpy().astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)  # constant features standardise to 0, not NaN


def _build_shard(
    shard_users: pl.DataFrame,
    ev: pl.DataFrame,
    event_mods: list[str],
    features: list[str],
    tab_stats: tuple[np.ndarray, np.ndarray],
    supervision: Supervision,
) -> pa.Table:
    """One shard's rows, in the shard's user order: the capped (seen) events, their times, values and
    categories per modality, the tabular vector and the QA pairs."""
    base = shard_users.select("user_id")
    hist = ev.filter(pl.col("window") == "history")
    seen = hist.filter(pl.col("seen"))
    columns: dict[str, pa.Array] = {"user_id": pa.array(base["user_id"].to_list(), pa.string())}
    totals = hist.group_by("user_id", "modality").agg(pl.len().cast(pl.Int32).alias("n"))
    for m in event_mods:
        seq = (
            seen.filter(pl.col("modality") == m)  # already sorted by user, time, vocab id
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
    if features:
        z = ((shard_users.select(features).to_numpy() - tab_stats[0]) / tab_stats[1]).astype(np.float32)
        columns["tabular"] = pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), len(features))
    else:
        columns["tabular"] = pa.array([[] for _ in range(base.height)], pa.list_(pa.float32()))

    pairs = supervision.pairs(base["user_id"].to_list(), ev)
    columns["qa_query"] = pa.array(pairs["query"], pa.list_(pa.string()))
    columns["qa_answer"] = pa.array(pairs["answer"], pa.list_(pa.string()))
    columns["qa_source"] = pa.array(pairs["source"], pa.list_(pa.string()))
    schema = shard_schema(event_mods, len(features))
    return pa.table(columns).cast(schema)


def _collect_positives(
    ev: pl.DataFrame | None, scenarios: list[Scenario], positives: dict[str, set[str]]
) -> None:
    if ev is None:
        return
    fut = ev.filter(pl.col("window") == "future")
    for s in scenarios:
        cond = pl.col("category").is_in(list(s.categories))
        if s.modalities:
            cond = cond & pl.col("modality").is_in(list(s.modalities))
        positives[s.name].update(fut.filter(cond)["user_id"].unique().to_list())


def _benchmark(
    s: Scenario,
    kept: pl.DataFrame,
    positives: set[str],
    labels: pl.DataFrame | None,
    cfg: BuildConfig,
    skipped: dict,
) -> pa.Table:
    ids = kept["user_id"].to_list()
    given = labels.filter(pl.col("scenario") == s.name) if labels is not None else None
    if given is not None and given.height:
        known = set(ids)
        missing = given.filter(~pl.col("user_id").is_in(ids)).height
        count_skip(
            skipped,
            f"labels_of_unknown_users:{s.name}",
            missing,
            f"labels of users not in the data set ({s.name})",
        )
        given = given.filter(pl.col("user_id").is_in(list(known)))
        users, y = given["user_id"].to_list(), given["label"].to_numpy().astype(np.int8)
    else:
        users, y = ids, np.array([u in positives for u in ids], dtype=np.int8)
    split = [
        "test" if stable_fraction(f"{cfg.split_seed}:{u}") < cfg.test_fraction else "train" for u in users
    ]
    order = np.argsort(np.array(users, dtype=str), kind="stable")
    return pa.table(
        {
            "user_id": pa.array([users[i] for i in order], pa.string()),
            "label": pa.array(y[order], pa.int8()),
            "split": pa.array([split[i] for i in order], pa.string()),
        },
        schema=BENCHMARK_SCHEMA,
    )
