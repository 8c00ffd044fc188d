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
   pairs (see :mod:`data_modules.etl.supervision`), and rule-based labels;
7. benchmarks with a user-disjoint split, the tokenizer, and finally ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from data_modules.etl.manifest import Manifest, file_entry
from data_modules.etl.modality_meta import meta_to_json, resolve_modalities_meta
from data_modules.etl.names import check_name
from data_modules.etl.raw import (
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
from data_modules.etl.scenarios import Scenario, load_scenarios, save_scenarios
from data_modules.etl.schemas import (
    BENCHMARK_SCHEMA,
    SCHEMA_VERSION,
    TABULAR,
    VOCAB_SCHEMA,
    event_modalities,
    parse_caps,
    resolve_caps,
    shard_schema,
)
from data_modules.etl.supervision import (
    QAReport,
    QASpec,
    Supervision,
    mark_seen,
    seen_combos,
    topic_map,
    topic_pool,
    topic_report,
)
from data_modules.etl.topics import save_topics
from data_modules.loading.tokenizer import train_tokenizer
from data_modules.util.atomic import atomic_dir, stale_siblings, write_parquet
from data_modules.util.errors import DataError
from data_modules.util.hashing import stable_fraction, stable_hash64
from data_modules.util.lock import FolderLock

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """Raw logs -> UserU shards, vocabularies, benchmarks and manifest (saved verbatim in it)."""

    raw: str | None = None
    """folder with events/, users.parquet, scenarios.json [, labels.parquet, qa.parquet]"""
    out: str = "data"
    """the data set folder"""
    events: str | None = None
    """path of the events input (overrides the raw folder's)"""
    users: str | None = None
    """path of the users table (overrides the raw folder's)"""
    scenarios: str | None = None
    """path of scenarios.json (overrides the raw folder's)"""
    labels: str | None = None
    """path of labels.parquet (overrides the raw folder's)"""
    qa: str | None = None
    """path of qa.parquet, external (user, question, answer) pairs (overrides the raw folder's)"""
    topics: str | None = None
    """path of topics.json (overrides the raw folder's)"""
    modalities_meta: str | None = None
    """path of modalities.json (overrides the raw folder's)"""
    modalities: str | None = None
    """comma-separated modalities to use, 'tabular' for the users table (default: modalities.json's
    order, else every modality in the events, sorted, + tabular)"""
    timezone: str = "UTC"
    """IANA time zone of calendar facts (days, weekends) and of a naive cutoff"""
    cutoff: str | None = None
    """ISO time splitting history from future (default: last day - future window)"""
    history_days: int = 90
    """days of behaviour before the cutoff"""
    future_days: int = 30
    """days after the cutoff: D_future answers and scenario labels"""
    max_events: str | None = None
    """per-modality event caps, e.g. bill=250,mini=150, or 'paper' (default: built-in caps)"""
    users_per_shard: int = 1024
    """users per shard file"""
    row_group_size: int = 256
    """users per parquet row group"""
    topics_per_user: int = 10
    """templated D_uqa topics per user"""
    topic_categories: int = 8
    """derived topic pool: at most this many category topics per modality"""
    future_actions: int = 5
    """D_future: most frequent future actions named per answer"""
    future_bins: int = 3
    """D_future: activity-level bins"""
    external_qa: Literal["add", "replace"] = "add"
    """external QA pairs beside the templated D_uqa, or replacing it for users who have some"""
    test_fraction: float = 0.3
    """benchmark users held out for test"""
    split_seed: int = 0
    """seed of the train/test split"""
    tokenizer_vocab: int = 4096
    """vocabulary of the data set's own tokenizer"""
    max_text_chars: int = 1000
    """event texts are cut to this many characters (counted in the manifest's skipped)"""
    min_class_users: int = 1
    """each scenario needs this many users of each label in train and in test, else the build
    stops (a cutoff past the data leaves every label 0); 0 turns the check off"""

    def modality_list(self) -> list[str] | None:
        return [m.strip() for m in self.modalities.split(",") if m.strip()] if self.modalities else None


@dataclass
class _Plan:
    """What the first steps decide and the later ones read: the inputs, the time windows, the users."""

    cfg: BuildConfig
    out: Path
    inputs: RawInputs
    skipped: dict[str, int]
    modalities: list[str]
    event_mods: list[str]
    caps: dict[str, int]
    scenarios: list[Scenario]
    meta: list
    cutoff: dt.datetime
    windows: dict[str, int]
    kept: pl.DataFrame
    features: list[str]
    labels: pl.DataFrame | None
    external: pl.DataFrame | None


def build(cfg: BuildConfig) -> Manifest:
    """Run the whole build into a temporary folder beside ``cfg.out`` and swap it into place at the
    end, so a killed rebuild leaves the old data set whole (never old and new files mixed); one
    build at a time per folder. Returns the manifest."""
    final = Path(cfg.out)
    if final.exists() and any(final.iterdir()) and not (final / "manifest.json").exists():
        raise DataError(final, "is not empty and holds no manifest.json: not a data set to rebuild",
                        expected="an empty or new folder, or a data set built before")  # fmt: skip
    with FolderLock(final.with_name(f".{final.name}.lock"), f"data set {final}"):
        for stale in stale_siblings(final):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(final) as staging:
            manifest = _build_into(cfg, staging)
    return manifest


def _build_into(cfg: BuildConfig, out: Path) -> Manifest:
    """The build's steps, writing into ``out``; the manifest is written last."""
    plan, events, users_table = _read_inputs(cfg, out)
    events = _cut_windows(plan, events)
    plan.kept = _select_users(events, users_table, plan.skipped)
    if plan.external is not None:
        known = plan.external["user_id"].is_in(plan.kept["user_id"].implode())
        count_skip(
            plan.skipped,
            "qa_pairs_of_unknown_users",
            int((~known).sum()),
            "QA pairs of users not in the data set",
        )
    shard_map = _assign_shards(plan.kept, cfg.users_per_shard)
    events = events.join(shard_map.lazy().select("user_id", "shard"), on="user_id", how="inner")
    vocab = _write_vocabs(plan.out, _history_combos(events), plan.event_mods)
    tab_stats = _tabular_stats(plan.kept, plan.features)
    files = {
        f"vocab/{m}.parquet": file_entry(plan.out, f"vocab/{m}.parquet", t.height) for m, t in vocab.items()
    }
    topics, positives, qa_report = _write_shards(plan, events, shard_map, vocab, tab_stats, files)
    bench_counts = _write_benchmarks(plan, positives, files)
    _write_side_files(plan, topics, files)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        modalities=plan.modalities,
        event_modalities=plan.event_mods,
        max_events=plan.caps,
        tabular_features=plan.features,
        tabular_mean=tab_stats[0].tolist(),
        tabular_std=tab_stats[1].tolist(),
        cutoff=plan.cutoff.isoformat(),
        history_days=cfg.history_days,
        future_days=cfg.future_days,
        counts={
            "users": len(plan.kept),
            "shards": int(shard_map["shard"].max()) + 1,
            "history_events": int(plan.windows.get("history", 0)),
            "future_events": int(plan.windows.get("future", 0)),
            "vocab": {m: v.height for m, v in vocab.items()},
            "benchmarks": bench_counts,
        },
        skipped=dict(plan.skipped),
        files=files,
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        encoders={},
        timezone=cfg.timezone,
        modality_meta=meta_to_json(plan.meta),
        qa=qa_report.to_json(),
    )
    manifest.save(plan.out)
    return manifest


def _read_inputs(cfg: BuildConfig, out: Path) -> tuple[_Plan, pl.LazyFrame, pl.DataFrame | None]:
    """Step 1: locate and check the raw inputs, resolve modalities, caps, metadata and the cutoff."""
    inputs = RawInputs.locate(
        cfg.raw, events=cfg.events, users=cfg.users, scenarios=cfg.scenarios, labels=cfg.labels, qa=cfg.qa,
        topics=cfg.topics, modalities_meta=cfg.modalities_meta,
    )  # fmt: skip
    tz = check_timezone(cfg.timezone)
    modalities = cfg.modality_list() or infer_modalities(inputs)
    for m in modalities:  # each names vocab/<m>.parquet and vectors/<m>.npy
        check_name(m, "--modalities" if cfg.modalities else "modality (from the events or modalities.json)")
    event_mods = event_modalities(modalities)
    if not event_mods:
        raise ValueError("modalities must name at least one event modality")
    caps = resolve_caps(modalities, parse_caps(cfg.max_events))
    scenarios = load_scenarios(inputs.scenarios)
    events = scan_events(inputs, event_mods, cfg.max_text_chars)
    users, features = read_users(inputs.users, TABULAR in modalities)
    labels = read_labels(inputs.labels, {s.name for s in scenarios}) if inputs.labels else None
    external = read_external_qa(inputs.qa) if inputs.qa else None
    per_modality = events.group_by("modality").agg(pl.col("value").count().alias("valued")).collect()
    valued = {m: int(n) for m, n in per_modality.iter_rows()}
    meta = resolve_modalities_meta(inputs.modalities_meta, event_mods, valued)
    if cfg.cutoff:
        cutoff = resolve_cutoff(cfg.cutoff, tz)
    else:
        cutoff, why = default_cutoff(events, cfg.future_days, tz)
        log.warning("default cutoff %s UTC: %s (set --cutoff to choose)", cutoff.isoformat(), why)
    plan = _Plan(
        cfg=cfg, out=out, inputs=inputs, skipped=inputs.skipped, modalities=modalities, event_mods=event_mods,
        caps=caps, scenarios=scenarios, meta=meta, cutoff=cutoff, windows={}, kept=pl.DataFrame(),
        features=features, labels=labels, external=external,
    )  # fmt: skip
    return plan, events, users


def _cut_windows(plan: _Plan, events: pl.LazyFrame) -> pl.LazyFrame:
    """Step 2: history [cutoff - history_days, cutoff) and future [cutoff, cutoff + future_days);
    events outside both are a counted skip."""
    cfg, cutoff = plan.cfg, plan.cutoff
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
    plan.windows = dict(events.group_by("window").len().collect().iter_rows())
    outside = plan.windows.get("before", 0) + plan.windows.get("after", 0)
    count_skip(plan.skipped, "events_outside_windows", outside, f"events outside [{start}, {end})")
    return events.filter(pl.col("window").is_in(["history", "future"]))


def _history_combos(events: pl.LazyFrame) -> pl.DataFrame:
    """(modality, text, category) -> count over the history window: the vocabularies' source."""
    return (
        events.filter(pl.col("window") == "history")
        .group_by("modality", "text", "category")
        .agg(pl.len().alias("count"))
        .collect()
        .sort("modality", "text", "category", nulls_last=True)
    )


def _write_shards(
    plan: _Plan, events: pl.LazyFrame, shard_map: pl.DataFrame, vocab: dict, tab_stats: tuple, files: dict
) -> tuple[list, dict[str, set[str]], QAReport]:
    """Step 3: events partitioned by shard in a temp folder, then two passes: the topic pool from
    what the model will see, then one shard at a time (rows, supervision text, positives)."""
    cfg, caps, event_mods = plan.cfg, plan.caps, plan.event_mods
    n_shards = int(shard_map["shard"].max()) + 1
    positives: dict[str, set[str]] = {s.name: set() for s in plan.scenarios}
    qa_report = QAReport()
    with tempfile.TemporaryDirectory(dir=plan.out, prefix=".build-") as tmp:
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
        topics, topic_source = topic_pool(
            plan.inputs.topics, event_mods, combos_seen, plan.meta, cfg.topic_categories
        )
        tmap, topic_means = topic_map(combos_seen, topics, len(plan.kept))
        qa_report.topics = topic_report(topics, topic_source, tmap, topic_means, combos_seen)
        spec = QASpec(
            history_days=cfg.history_days, future_days=cfg.future_days, future_bins=cfg.future_bins,
            future_actions=cfg.future_actions, topics_per_user=cfg.topics_per_user, external_qa=cfg.external_qa,
            timezone=cfg.timezone,
        )  # fmt: skip
        supervision = Supervision(
            spec, topics, tmap, topic_means, plan.external, plan.cutoff, plan.meta, qa_report
        )
        # Pass 2: one shard at a time.
        for k in range(n_shards):
            shard_users = shard_map.filter(pl.col("shard") == k).sort("order")
            ev = shard_events(k)
            table = _build_shard(shard_users, ev, event_mods, plan.features, tab_stats, supervision)
            _collect_positives(ev, plan.scenarios, positives)
            name = f"shards/shard-{k:05d}.parquet"
            write_parquet(plan.out / name, table, row_group_size=cfg.row_group_size)
            files[name] = file_entry(plan.out, name, table.num_rows)
    count_skip(
        plan.skipped, "qa_sentences_dropped_by_reflection", sum(qa_report.dropped.values()),
        "unsupported QA sentences",
    )  # fmt: skip
    qa_report.log()
    return topics, positives, qa_report


def _write_benchmarks(plan: _Plan, positives: dict[str, set[str]], files: dict) -> dict[str, dict]:
    """Step 4: one labelled, user-disjoint train/test benchmark per scenario."""
    labels, bench_counts = plan.labels, {}
    for s in plan.scenarios:
        table = _benchmark(s, plan.kept, positives[s.name], labels, plan.cfg, plan.skipped)
        name = f"benchmarks/{s.name}.parquet"
        write_parquet(plan.out / name, table)
        files[name] = file_entry(plan.out, name, table.num_rows)
        classes = _class_counts(table)
        _check_classes(s.name, classes, plan.cfg.min_class_users)
        bench_counts[s.name] = {
            "users": table.num_rows,
            "classes": classes,
            "positive_rate": round(
                float(np.mean(table.column("label").to_numpy())) if table.num_rows else 0.0, 4
            ),
            "source": "labels" if labels is not None and s.name in set(labels["scenario"]) else "rule",
        }
    return bench_counts


def _class_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """Users per label in each split: {"train": {"0": n, "1": n}, "test": {...}}."""
    df = pl.from_arrow(table.select(["split", "label"]))
    out: dict[str, dict[str, int]] = {"train": {"0": 0, "1": 0}, "test": {"0": 0, "1": 0}}
    for split, label, n in df.group_by("split", "label").len().iter_rows():
        out[split][str(label)] = int(n)
    return out


def _check_classes(name: str, classes: dict[str, dict[str, int]], minimum: int) -> None:
    """A scenario whose train or test split lacks a label cannot be probed or tuned: stop the build
    naming it (a stray cutoff, a rule that matches nobody), rather than write a useless benchmark."""
    for split, counts in classes.items():
        for label, n in counts.items():
            if n < minimum:
                raise DataError(
                    f"scenario '{name}'", f"{n} users with label {label} in {split} ({classes})",
                    expected=f"at least --min-class-users {minimum} of each label in train and test: check the "
                    "cutoff and the scenario's rule, or pass --min-class-users 0",
                )  # fmt: skip


def _write_side_files(plan: _Plan, topics: list, files: dict) -> None:
    """Step 5: scenarios.json, topics.json and the data set's own tokenizer."""
    out = plan.out
    save_scenarios(out / "scenarios.json", plan.scenarios)
    files["scenarios.json"] = file_entry(out, "scenarios.json", len(plan.scenarios))
    save_topics(out / "topics.json", topics)
    files["topics.json"] = file_entry(out, "topics.json", len(topics))
    tok_dir = train_tokenizer(
        out, sorted(files), plan.cfg.tokenizer_vocab, extra_texts=[s.query for s in plan.scenarios]
    )
    for p in sorted(tok_dir.iterdir()):
        rel = str(p.relative_to(out))
        files[rel] = file_entry(out, rel, None)


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
        [stable_hash64(u, "big") for u in ids],
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
