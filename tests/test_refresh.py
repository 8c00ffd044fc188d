"""A daily refresh (``qanchor build --previous DATA --raw NEW``) reads only the new raw files and the
previous data set's kept events, rolls the windows forward, and equals a full build on the old and
new raw files together; a previous data set it cannot refresh is one line, exit 2, nothing written."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.refresh_state import REFRESH_DIR
from data_modules.synth.world import write_world
from tests.conftest import run_qanchor
from tests.test_build_partitions import FLAGS, OPTIONS, assert_same_data_set, partitioned_build
from tests.test_faults import files_under, one_line_error

KEEP = dict(OPTIONS, refreshable=True)  # every data set here may be refreshed
SMALL_FILES = ("users.parquet", "scenarios.json", "modalities.json", "topics.json")
NEW_DAYS = 10  # the world's last ten days arrive as the new logs


@pytest.fixture(scope="module")
def split_raw(tmp_path_factory) -> dict[str, Path]:
    return split_world(tmp_path_factory.mktemp("split"))


def split_world(root: Path) -> dict[str, Path]:
    """A 300-user world with 20 days more history than the windows need, as yesterday's files (OLD),
    today's files (NEW: the last days, 3 % of older events arriving late, and 40 older events shipped
    again) and both together (UNION), in folders under ``root``."""
    world = root / "world"
    write_world(world, n_users=300, seed=7, lead_days=20)
    events = pl.read_parquet(sorted((world / "events").glob("*.parquet"))).with_row_index("i")
    last_day = events["ts"].max().replace(hour=0, minute=0, second=0, microsecond=0)
    recent = pl.col("ts") >= last_day - dt.timedelta(days=NEW_DAYS - 1)
    late = (pl.col("i") % 33) == 5
    old = events.filter(~recent & ~late).drop("i")
    new = pl.concat([events.filter(recent | late), events.filter(~recent & ~late).head(40)]).drop("i")
    folders = {}
    for name, parts in {"old": [old], "new": [new], "union": [old, new]}.items():
        folder = root / name
        (folder / "events").mkdir(parents=True)
        for k, part in enumerate(parts):
            part.write_parquet(folder / "events" / f"{k}-{name}.parquet")
        for small in SMALL_FILES:
            if (world / small).exists():
                shutil.copy(world / small, folder / small)
        folders[name] = folder
    assert old.height and new.height and old.height + new.height == events.height + 40
    return folders


@pytest.fixture(scope="module")
def previous(split_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prev") / "data"
    build(BuildConfig(raw=str(split_raw["old"]), out=str(out), **KEEP))
    return out


@pytest.fixture(scope="module")
def full_union(split_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "data"
    build(BuildConfig(raw=str(split_raw["union"]), out=str(out), **KEEP))
    return out


def kept_events(data: Path) -> pl.DataFrame:
    files = sorted((data / REFRESH_DIR / "events").glob("*.parquet"))
    return pl.read_parquet(files).sort(pl.all())


def assert_same_refresh_state(a: Path, b: Path) -> None:
    """What the next refresh starts from: the same kept events and carried counts."""
    sa, sb = (json.loads((d / REFRESH_DIR / "state.json").read_text()) for d in (a, b))
    for key in ("options", "cutoff", "day_counts", "valued", "skipped", "events_before_window"):
        assert sa[key] == sb[key], key
    assert kept_events(a).equals(kept_events(b))


def test_a_refresh_rolls_the_windows_forward_and_equals_a_full_build_on_the_union(
    split_raw, previous, full_union, tmp_path
):
    prev_cutoff = json.loads((previous / "manifest.json").read_text())["cutoff"]
    out = tmp_path / "data"
    manifest = build(BuildConfig(raw=str(split_raw["new"]), out=str(out), previous=str(previous), **KEEP))
    assert manifest.cutoff > prev_cutoff  # the default cutoff moved with the new days
    assert_same_data_set(full_union, out)
    assert_same_refresh_state(full_union, out)
    skipped = manifest.skipped
    assert skipped["duplicate_events"] > 0  # re-shipped events inside the window, found against the kept ones
    assert skipped["events_outside_windows"] > 0  # the days that left the window, still counted


def test_a_refresh_of_a_refresh_equals_the_full_build(split_raw, previous, full_union, tmp_path):
    """Today's files arrive as two days: the state carries on."""
    new = pl.read_parquet(sorted((split_raw["new"] / "events").glob("*.parquet")))
    middle = new["ts"].max() - dt.timedelta(days=NEW_DAYS // 2)
    days = []
    for k, part in enumerate([new.filter(pl.col("ts") < middle), new.filter(pl.col("ts") >= middle)]):
        folder = tmp_path / f"raw-day{k}"
        (folder / "events").mkdir(parents=True)
        part.write_parquet(folder / "events" / "new.parquet")
        for small in SMALL_FILES:
            shutil.copy(split_raw["new"] / small, folder / small)
        days.append(folder)
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    build(BuildConfig(raw=str(days[0]), out=str(day1), previous=str(previous), **KEEP))
    build(BuildConfig(raw=str(days[1]), out=str(day2), previous=str(day1), **KEEP))
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (previous, day1, day2)]
    assert manifests[0]["cutoff"] < manifests[1]["cutoff"] < manifests[2]["cutoff"]
    assert_same_data_set(full_union, day2)
    assert_same_refresh_state(full_union, day2)


def test_a_partitioned_refresh_of_a_partitioned_build_equals_the_full_build(split_raw, full_union, tmp_path):
    """Two partitions yesterday, three today: each task reads only the kept files overlapping it."""
    prev = tmp_path / "prev"
    partitioned_build(split_raw["old"], prev, 2, refreshable=True)
    out = tmp_path / "data"
    partitioned_build(split_raw["new"], out, 3, previous=str(prev), refreshable=True)
    assert_same_data_set(full_union, out)
    assert_same_refresh_state(full_union, out)


def test_a_data_set_built_not_refreshable_keeps_no_events(split_raw, tmp_path):
    out = tmp_path / "data"
    manifest = build(BuildConfig(raw=str(split_raw["old"]), out=str(out), **OPTIONS))
    assert not (out / REFRESH_DIR).exists() and not any(f.startswith(REFRESH_DIR) for f in manifest.files)


def _refresh(new: Path, previous: Path, out: Path, *extra: str):
    return run_qanchor(
        "build",
        "--raw",
        str(new),
        "--previous",
        str(previous),
        "--out",
        str(out),
        *FLAGS,
        *extra,
        check=False,
    )


def test_refresh_bad_inputs_are_one_line_and_write_nothing(split_raw, previous, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    other_version = tmp_path / "v1"
    shutil.copytree(previous, other_version)
    manifest = json.loads((other_version / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (other_version / "manifest.json").write_text(json.dumps(manifest))
    no_state = tmp_path / "nostate"
    shutil.copytree(previous, no_state)
    shutil.rmtree(no_state / REFRESH_DIR)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(previous, corrupt)
    kept_file = sorted((corrupt / REFRESH_DIR / "events").glob("*.parquet"))[0]
    kept_file.write_bytes(kept_file.read_bytes()[:-100])
    flipped = tmp_path / "flipped"  # same size, other bytes: found by the task that reads it
    shutil.copytree(previous, flipped)
    flipped_file = sorted((flipped / REFRESH_DIR / "events").glob("*.parquet"))[0]
    data = bytearray(flipped_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped_file.write_bytes(bytes(data))
    before = files_under(tmp_path)
    out = work / "data"
    one_line_error(_refresh(split_raw["new"], corrupt, out), kept_file.name, "size")
    one_line_error(_refresh(split_raw["new"], flipped, out), flipped_file.name, "checksum mismatch")
    one_line_error(_refresh(split_raw["new"], split_raw["old"], out), "--previous is not a data set")
    one_line_error(_refresh(split_raw["new"], other_version, out), "another version (schema 1)")
    one_line_error(_refresh(split_raw["new"], no_state, out), "keeps no refresh state")
    one_line_error(
        _refresh(split_raw["new"], previous, out, "--history_days", "60"),
        "--history_days is 60, the previous data set's is 90",
    )
    one_line_error(
        _refresh(split_raw["new"], previous, out, "--cutoff", "2026-03-01"), "is before the previous"
    )
    one_line_error(_refresh(split_raw["new"], previous, previous), "is the --previous data set")
    assert files_under(tmp_path) == before
