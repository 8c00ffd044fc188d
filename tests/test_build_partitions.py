"""A build split into partitions (plan, stats and shards per partition, finish) gives the same data
set as the one-process build; its stages refuse bad specs, mixed plans and missing partitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_modules.builder.moments import exact_moments, mean_std, merge_moments
from data_modules.builder.runner import BuildConfig, build
from data_modules.util.errors import DataError
from data_modules.util.partition import PartitionSpec, partition_of
from tests.conftest import run_qanchor
from tests.test_faults import files_under, one_line_error

OPTIONS = dict(users_per_shard=100, row_group_size=32, tokenizer_vocab=1024, min_class_users=0)
FLAGS = [
    "--users_per_shard",
    "100",
    "--row_group_size",
    "32",
    "--tokenizer_vocab",
    "1024",
    "--min_class_users",
    "0",
]


def partitioned_build(raw: Path, out: Path, n: int, **overrides) -> None:
    """Every stage in turn, as the SLURM chain would run them (shards after all stats)."""
    kw = {**OPTIONS, **overrides, "raw": str(raw), "out": str(out)}
    build(BuildConfig(stage="plan", partitions=n, **kw))
    for stage in ("scatter", "stats", "shards"):
        for i in reversed(range(n)):  # any order
            build(BuildConfig(stage=stage, partition=f"{i}/{n}", **kw))
    build(BuildConfig(stage="finish", **kw))


def user_rows(data: Path) -> pl.DataFrame:
    shards = [
        pl.read_parquet(data / name)
        for name in sorted(json.loads((data / "manifest.json").read_text())["files"])
        if name.startswith("shards/")
    ]
    return pl.concat(shards)


def assert_same_data_set(a: Path, b: Path) -> None:
    """Same per-user rows (in the same user order), vocabularies, benchmarks, statistics, tokenizer."""
    rows_a, rows_b = user_rows(a), user_rows(b)
    assert rows_a.height > 0 and rows_a.equals(rows_b)
    for kind in ("vocab", "benchmarks"):
        names = sorted(p.name for p in (a / kind).glob("*.parquet"))
        assert names and names == sorted(p.name for p in (b / kind).glob("*.parquet"))
        for name in names:
            assert pl.read_parquet(a / kind / name).equals(pl.read_parquet(b / kind / name)), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):  # where the topics file lay (a path) is not content
        m["qa"]["topics"].pop("source", None)
    for key in (
        "tabular_mean",
        "tabular_std",
        "cutoff",
        "skipped",
        "qa",
        "modalities",
        "max_events",
        "modality_meta",
    ):
        assert ma[key] == mb[key], key
    counts_a, counts_b = dict(ma["counts"]), dict(mb["counts"])
    counts_a.pop("shards"), counts_b.pop("shards")
    assert counts_a == counts_b
    assert (a / "tokenizer/tokenizer.json").read_bytes() == (b / "tokenizer/tokenizer.json").read_bytes()


@pytest.fixture(scope="module")
def one_process(raw_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "data"
    build(BuildConfig(raw=str(raw_world), out=str(out), **OPTIONS))
    return out


def test_a_three_partition_build_equals_the_one_process_build(raw_world, one_process, tmp_path):
    out = tmp_path / "data"
    partitioned_build(raw_world, out, 3)
    assert_same_data_set(one_process, out)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert {s.split("-shard-")[0] for s in shards} == {"part-00000", "part-00001", "part-00002"}
    assert not (tmp_path / ".data.parts").exists()  # the work folder is gone after the finish


def test_partitions_are_hash_ranges_that_continue_the_shard_order(one_process):
    """Partition I's users come before partition I+1's in the one-process build's user order."""
    ids = user_rows(one_process)["user_id"].to_list()
    owners = [partition_of(u, 4) for u in ids]
    assert owners == sorted(owners) and set(owners) == {0, 1, 2, 3}


def test_exact_moments_merge_to_the_same_bits_however_users_are_split():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(997, 3)) * np.array([1.0, 1e6, 1e-6])
    whole = mean_std(exact_moments(x), 3)
    for n in (2, 5):
        parts = [exact_moments(x[i::n]) for i in range(n)]
        merged = mean_std(merge_moments(parts), 3)
        assert np.array_equal(whole[0], merged[0]) and np.array_equal(whole[1], merged[1])
    np.testing.assert_allclose(whole[0], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole[1], x.std(axis=0), rtol=1e-12)


def test_a_rerun_task_is_skipped_and_a_rerun_plan_keeps_the_finished_partitions(raw_world, tmp_path):
    kw = {**OPTIONS, "raw": str(raw_world), "out": str(tmp_path / "data")}
    build(BuildConfig(stage="plan", partitions=2, **kw))
    for i in (0, 1):
        build(BuildConfig(stage="scatter", partition=f"{i}/2", **kw))
    build(BuildConfig(stage="stats", partition="0/2", **kw))
    stats = tmp_path / ".data.parts" / "stats-00000-of-00002" / "stats.json"
    before = stats.stat().st_mtime_ns
    again = build(BuildConfig(stage="plan", partitions=2, **kw))
    assert again["resumed"] is True
    build(BuildConfig(stage="stats", partition="0/2", **kw))
    assert stats.stat().st_mtime_ns == before
    # another plan (other options) starts afresh: the old partition is not reused
    build(BuildConfig(stage="plan", partitions=2, **{**kw, "history_days": 60}))
    assert not stats.exists()


@pytest.mark.parametrize("spec", ["3/3", "5/2", "0/0", "two/3", "1"])
def test_a_partition_spec_out_of_range_is_one_line(raw_world, tmp_path, spec):
    out = tmp_path / "data"
    run_qanchor(
        "build", "--raw", str(raw_world), "--out", str(out), "--stage", "plan", "--partitions", "3", *FLAGS
    )
    before = files_under(tmp_path)
    proc = run_qanchor("build", "--raw", str(raw_world), "--out", str(out), "--stage", "stats", "--partition", spec,
                       *FLAGS, check=False)  # fmt: skip
    one_line_error(proc, "--partition", spec)
    assert files_under(tmp_path) == before


def test_partitions_of_other_options_or_raw_files_are_refused(raw_world, tmp_path):
    out = tmp_path / "data"
    run_qanchor(
        "build", "--raw", str(raw_world), "--out", str(out), "--stage", "plan", "--partitions", "2", *FLAGS
    )
    before = files_under(tmp_path)
    proc = run_qanchor("build", "--raw", str(raw_world), "--out", str(out), "--stage", "stats", "--partition", "0/2",
                       *FLAGS, "--history_days", "60", check=False)  # fmt: skip
    one_line_error(proc, "history_days", "60", "90")
    other_raw = tmp_path / "raw2"
    other_raw.mkdir()
    for p in raw_world.rglob("*"):
        if p.is_file():
            (other_raw / p.relative_to(raw_world)).parent.mkdir(parents=True, exist_ok=True)
            (other_raw / p.relative_to(raw_world)).write_bytes(p.read_bytes())
    before = files_under(tmp_path)
    proc = run_qanchor("build", "--raw", str(other_raw), "--out", str(out), "--stage", "stats", "--partition", "0/2",
                       *FLAGS, check=False)  # fmt: skip
    one_line_error(proc, "raw")
    proc = run_qanchor("build", "--raw", str(raw_world), "--out", str(out), "--stage", "stats", "--partition", "0/4",
                       *FLAGS, check=False)  # fmt: skip
    one_line_error(proc, "the plan has 2 partitions")
    assert files_under(tmp_path) == before


def test_a_missing_partition_at_the_finish_is_one_line_and_nothing_is_written(raw_world, tmp_path):
    out = tmp_path / "data"
    kw = {**OPTIONS, "raw": str(raw_world), "out": str(out)}
    build(BuildConfig(stage="plan", partitions=3, **kw))
    for i in (0, 2):
        build(BuildConfig(stage="scatter", partition=f"{i}/3", **kw))
    with pytest.raises(DataError, match=r"1 of 3 partitions have no scatter output \(1\)"):
        build(BuildConfig(stage="stats", partition="0/3", **kw))
    build(BuildConfig(stage="scatter", partition="1/3", **kw))
    for i in (0, 2):
        build(BuildConfig(stage="stats", partition=f"{i}/3", **kw))
    with pytest.raises(DataError, match=r"1 of 3 partitions have no stats output \(1\)"):
        build(BuildConfig(stage="shards", partition="0/3", **kw))
    build(BuildConfig(stage="stats", partition="1/3", **kw))
    for i in (0, 1):
        build(BuildConfig(stage="shards", partition=f"{i}/3", **kw))
    proc = run_qanchor(
        "build", "--raw", str(raw_world), "--out", str(out), "--stage", "finish", *FLAGS, check=False
    )
    one_line_error(proc, "1 of 3 partitions have no shards output (2)")
    assert not out.exists()
    proc = run_qanchor("build", "--raw", str(raw_world), "--out", str(tmp_path / "elsewhere"), "--stage", "stats",
                       "--partition", "0/3", *FLAGS, check=False)  # fmt: skip
    one_line_error(proc, "no build plan")


def test_partition_spec_parses_and_names():
    assert PartitionSpec.parse("3/8") == PartitionSpec(3, 8)
    assert PartitionSpec.parse("3/8").name == "00003-of-00008"
    with pytest.raises(DataError, match="out of range"):
        PartitionSpec.parse("8/8")


def test_bench_build_reports_users_per_task_and_memory_for_each_task_count(tmp_path):
    import json as _json

    proc = run_qanchor(
        "bench", "build", "--users", "300", "--tasks", "1,2", "--refresh_days", "10", "--work", str(tmp_path),
        "--json",
    )  # fmt: skip
    result = _json.loads(proc.stdout.strip().splitlines()[-1])
    runs = {r["tasks"]: r for r in result["runs"] if r["mode"] == "full"}
    refreshes = {r["tasks"]: r for r in result["runs"] if r["mode"] == "refresh"}
    assert set(refreshes) == {1, 2}
    for tasks, run in refreshes.items():  # the same users from a tenth of the raw events
        assert run["users"] == runs[tasks]["users"]
        assert run["raw_events_read_mb"] < runs[tasks]["raw_events_read_mb"] / 5
    assert set(runs) == {1, 2} and runs[1]["users"] == runs[2]["users"] > 250
    for tasks, run in runs.items():
        assert len(run["per_task"]) == tasks and sum(t["users"] for t in run["per_task"]) == run["users"]
        assert all(t["users_per_s"] > 0 and t["peak_rss_mb"] > 50 for t in run["per_task"])
        assert run["array_wall_s"] >= run["plan_s"] + run["finish_s"]
    assert runs[1]["speedup_vs_1_task"] == 1.0
    assert not list(tmp_path.glob("data-*"))  # the builds are removed, the raw set is kept for reuse
    proc = run_qanchor("bench", "build", "--tasks", "0", "--work", str(tmp_path), check=False)
    one_line_error(proc, "--tasks")


def test_events_in_partitioned_folders_build_the_same_data_set(raw_world, one_process, tmp_path):
    """events/day=K/part.parquet (a Hive-style layout) is read like a flat folder; hidden files are not data."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(raw_world, raw, ignore=shutil.ignore_patterns("events"))
    for k, path in enumerate(sorted((raw_world / "events").glob("*.parquet"))):
        (raw / "events" / f"day={k}").mkdir(parents=True)
        shutil.copy(path, raw / "events" / f"day={k}" / "part.parquet")
    (raw / "events" / ".partial.parquet").write_bytes(b"not parquet")  # a half-copied upload
    out = tmp_path / "data"
    partitioned_build(raw, out, 2)
    assert_same_data_set(one_process, out)
