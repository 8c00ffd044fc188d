"""The **finish** stage (one process): the partitions' shards and benchmarks joined into the data
set, with the tokenizer, topics, scenarios, the refresh state and the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.builder.merge import MergedStats, add_counts
from data_modules.builder.plan import BuildPlan, WorkFolder
from data_modules.contract.refresh_state import (
    CARRIED_SKIPS,
    MOVABLE_OPTIONS,
    REFRESH_DIR,
    RefreshState,
    kept_name,
)
from data_modules.contract.scenarios import save_scenarios
from data_modules.contract.topics import save_topics
from data_modules.dataset.manifest import Manifest, file_entry
from data_modules.dataset.schemas import SCHEMA_VERSION, VOCAB_SCHEMA
from data_modules.dataset.tokenizer import train_tokenizer
from data_modules.supervision.pairs import QAReport, topic_report
from data_modules.util.atomic import read_json, write_parquet
from data_modules.util.errors import DataError
from data_modules.util.partition import PartitionSpec
from data_modules.util.skips import count_skip


def finish_into(plan: BuildPlan, work: WorkFolder, merged: MergedStats, out: Path) -> Manifest:
    """The finish: every partition's shards moved into ``out``, the vocabularies, the benchmarks (all
    partitions' rows, sorted by user), scenarios, topics, the tokenizer, and the manifest last."""
    work.require(plan, "shards")
    specs = [PartitionSpec(i, plan.partitions) for i in range(plan.partitions)]
    skipped = add_counts([plan.skipped, merged.skipped])
    files: dict[str, dict] = {}
    for m in plan.event_mods:
        name = f"vocab/{m}.parquet"
        write_parquet(out / name, merged.vocab[m].to_arrow().cast(VOCAB_SCHEMA))
        files[name] = file_entry(out, name, merged.vocab[m].height)
    report = QAReport()
    for s in specs:
        part = read_json(work.shards_dir(s) / "part.json")
        for name, entry in part["files"].items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(work.shards_dir(s) / name, out / name)  # same file system: a rename
            files[name] = entry
        skipped = add_counts([skipped, part["skipped"]])
        report.answers.update(part["qa"]["answers"])
        report.dropped.update(part["qa"]["dropped"])
        report.emptied += part["qa"]["emptied"]
    report.topics = topic_report(
        merged.topics, merged.topic_source, merged.tmap, merged.topic_means, merged.seen
    )
    count_skip(
        skipped,
        "qa_sentences_dropped_by_reflection",
        sum(report.dropped.values()),
        "unsupported QA sentences",
    )
    skipped = dict(sorted(skipped.items()))
    report.log()
    if plan.config.get("refreshable", False):
        _keep_for_refresh(plan, work, specs, merged, skipped, out, files)
    bench_counts = _write_benchmarks(plan, work, specs, out, files)
    scenarios = plan.scenarios
    save_scenarios(out / "scenarios.json", scenarios)
    files["scenarios.json"] = file_entry(out, "scenarios.json", len(scenarios))
    save_topics(out / "topics.json", merged.topics)
    files["topics.json"] = file_entry(out, "topics.json", len(merged.topics))
    tok_dir = train_tokenizer(
        out, sorted(files), plan.config["tokenizer_vocab"], extra_texts=[s.query for s in scenarios],
        max_users=plan.config.get("tokenizer_users") or None,
    )  # fmt: skip
    for p in sorted(tok_dir.iterdir()):
        rel = str(p.relative_to(out))
        files[rel] = file_entry(out, rel, None)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, modalities=plan.modalities, event_modalities=plan.event_mods,
        max_events=plan.caps, tabular_features=plan.features, tabular_mean=merged.tab_stats[0].tolist(),
        tabular_std=merged.tab_stats[1].tolist(), cutoff=plan.cutoff, history_days=plan.config["history_days"],
        future_days=plan.config["future_days"],
        counts={
            "users": merged.users, "shards": sum(1 for f in files if f.startswith("shards/")),
            "history_events": int(merged.windows.get("history", 0)),
            "future_events": int(merged.windows.get("future", 0)),
            "vocab": {m: v.height for m, v in merged.vocab.items()}, "benchmarks": bench_counts,
        },
        skipped=skipped, files=files, config=plan.config, encoders={}, timezone=plan.config["timezone"],
        modality_meta=plan.meta, qa=report.to_json(), categories=seen_categories(merged.seen, plan.event_mods),
    )  # fmt: skip
    manifest.save(out)
    return manifest


def seen_categories(seen: pl.DataFrame, event_mods: list[str]) -> dict[str, list[str]]:
    """Per event modality, the sorted categories of the history events the model sees."""
    cats = seen.filter(pl.col("category").is_not_null()).group_by("modality").agg(pl.col("category").unique())
    found = {m: sorted(c) for m, c in cats.iter_rows()}
    return {m: found.get(m, []) for m in event_mods}


def _keep_for_refresh(
    plan: BuildPlan, work: WorkFolder, specs, merged: MergedStats, skipped: dict, out: Path, files: dict
) -> None:
    """``refresh/``: each partition's kept events and the counts a refresh carries forward."""
    names = []
    for s in specs:
        entry = read_json(work.stats_dir(s) / "stats.json")["kept"]
        name = kept_name(s)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(work.stats_dir(s) / "kept.parquet", out / name)
        files[name] = entry
        names.append(name)
    RefreshState(
        options={k: v for k, v in plan.config.items() if k not in MOVABLE_OPTIONS},
        cutoff=plan.cutoff,
        partitions=plan.partitions,
        day_counts=plan.day_counts,
        valued=plan.valued,
        skipped={k: skipped[k] for k in CARRIED_SKIPS if k in skipped},
        events_before_window=plan.events_before_window + int(merged.windows.get("before", 0)),
        files=names,
    ).save(out)
    files[f"{REFRESH_DIR}/state.json"] = file_entry(out, f"{REFRESH_DIR}/state.json", None)


def _write_benchmarks(plan: BuildPlan, work: WorkFolder, specs, out: Path, files: dict) -> dict[str, dict]:
    """One labelled, user-disjoint train/test benchmark per scenario: all partitions' rows by user."""
    counts = {}
    min_class = plan.config["min_class_users"]
    for s in plan.scenarios:
        parts = [pq.read_table(work.shards_dir(p) / "bench" / f"{s.name}.parquet") for p in specs]
        table = pa.concat_tables(parts)
        order = np.argsort(np.array(table.column("user_id").to_pylist(), dtype=str), kind="stable")
        table = table.take(pa.array(order, pa.int64()))
        name = f"benchmarks/{s.name}.parquet"
        write_parquet(out / name, table)
        files[name] = file_entry(out, name, table.num_rows)
        classes = _class_counts(table)
        _check_classes(s.name, classes, min_class)
        labels = table.column("label").to_numpy()
        counts[s.name] = {
            "users": table.num_rows,
            "classes": classes,
            "positive_rate": round(float(np.mean(labels)) if table.num_rows else 0.0, 4),
            "source": "labels" if s.name in plan.labelled_scenarios else "rule",
        }
    return counts


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
