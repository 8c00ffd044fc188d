"""Bad input: a clear error naming the file and the column or row, or a counted, logged skip."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_modules.dataset.manifest import Manifest
from data_modules.loading.datamodule import UserUDataModule
from data_modules.util.errors import DataError
from tests.conftest import run_qanchor
from tests.helpers.small_raw import CUT
from tests.helpers.small_raw import build_small as _build
from tests.helpers.small_raw import events_table as _events
from tests.helpers.small_raw import users_table as _users
from tests.helpers.small_raw import write_raw as _raw


def test_missing_column_names_file_and_column(tmp_path):
    raw = _raw(tmp_path, events=_events(text=None))
    with pytest.raises(DataError, match=r"part-0\.parquet, column 'text': missing column"):
        _build(raw, tmp_path)


def test_mistyped_column_names_file_column_and_expected_type(tmp_path):
    raw = _raw(tmp_path, events=_events(ts=["2026-03-01"] * 5))
    with pytest.raises(
        DataError, match=r"part-0\.parquet, column 'ts': has type string \(expected timestamp\)"
    ):
        _build(raw, tmp_path)


def test_unknown_modality_names_file_row_and_value(tmp_path):
    raw = _raw(tmp_path, events=_events(modality=["bill", "app", "bill", "radio", "bill"]))
    with pytest.raises(
        DataError, match=r"part-0\.parquet, column 'modality', row 3: unknown modality 'radio'"
    ):
        _build(raw, tmp_path, modalities="bill,app,search,tabular")


def test_truncated_parquet_names_the_file(tmp_path):
    raw = _raw(tmp_path)
    path = raw / "events" / "part-0.parquet"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"part-0\.parquet: not a readable parquet file"):
        _build(raw, tmp_path)


def test_nan_or_inf_tabular_names_column_and_row(tmp_path):
    for bad in (float("nan"), float("inf")):
        raw = _raw(tmp_path, users=_users(balance=[1.0, bad, 3.0]))
        with pytest.raises(
            DataError, match=r"users\.parquet, column 'balance', row 1: non-finite tabular value"
        ):
            _build(raw, tmp_path)


def test_duplicate_user_ids_name_the_user_and_row(tmp_path):
    raw = _raw(tmp_path, users=_users(user_id=["a", "b", "a"]))
    with pytest.raises(DataError, match=r"users\.parquet, column 'user_id', row 2: duplicate user_id 'a'"):
        _build(raw, tmp_path)


def test_non_numeric_tabular_feature_is_an_error(tmp_path):
    raw = _raw(tmp_path, users=_users(age=["x", "y", "z"]))
    with pytest.raises(
        DataError, match=r"column 'age': has type string \(expected a numeric tabular feature\)"
    ):
        _build(raw, tmp_path)


def test_counted_skips_users_without_events_events_outside_windows_and_empty_files(tmp_path):
    events = _events(
        ts=pa.array([CUT - dt.timedelta(days=1), CUT - dt.timedelta(days=200), CUT - dt.timedelta(days=3),
                     CUT + dt.timedelta(days=90), CUT + dt.timedelta(days=2)], pa.timestamp("us")),
    )  # fmt: skip
    raw = _raw(tmp_path, events=events, users=_users(user_id=["a", "b", "c"]))
    pq.write_table(events.slice(0, 0), raw / "events" / "part-1-empty.parquet")
    users = _users(user_id=["a", "b", "c"]).to_pydict()
    users = pa.table({k: v + ([0] if k != "user_id" else ["ghost"]) for k, v in users.items()})
    pq.write_table(users, raw / "users.parquet")
    m = _build(raw, tmp_path)
    assert m.skipped == {
        "empty_event_files": 1,
        "events_outside_windows": 2,  # 200 days back, 90 days ahead
        "users_without_events": 1,  # ghost
        "users_without_history": 1,  # c has a future event only
    }
    assert m.counts["users"] == 2


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    raw = _raw(tmp_path, events=_events(modality=["bill", "tv", "bill", "app", "bill"]))
    proc = run_qanchor(
        "build",
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "d"),
        "--modalities",
        "bill,app,tabular",
        check=False,
    )
    assert proc.returncode == 2
    assert (
        "error:" in proc.stderr and "unknown modality 'tv'" in proc.stderr and "part-0.parquet" in proc.stderr
    )


@pytest.fixture
def copy_of_built(built, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def test_checksum_mismatch_names_the_shard(copy_of_built):
    shard = copy_of_built / "shards" / "shard-00001.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, table.num_rows - 1), shard)
    with pytest.raises(DataError, match=r"shard-00001\.parquet: (size|checksum)"):
        UserUDataModule(str(copy_of_built)).setup()


def test_corrupt_shard_without_verification_names_the_file(copy_of_built):
    shard = copy_of_built / "shards" / "shard-00000.parquet"
    shard.write_bytes(b"PAR1" + bytes(100))
    with pytest.raises(DataError, match=r"shard-00000\.parquet: not a readable parquet file"):
        UserUDataModule(str(copy_of_built), verify=False).setup()


def test_empty_shard_is_refused(copy_of_built):
    shard = copy_of_built / "shards" / "shard-00002.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 0), shard)
    m = Manifest.load(copy_of_built)
    from data_modules.dataset.manifest import file_entry

    m.files["shards/shard-00002.parquet"] = file_entry(copy_of_built, "shards/shard-00002.parquet", 0)
    m.save(copy_of_built)
    with pytest.raises(DataError, match=r"shard-00002\.parquet: empty shard"):
        UserUDataModule(str(copy_of_built)).setup()


def test_missing_vectors_tell_the_user_to_encode(built, tmp_path):
    dst = tmp_path / "noenc"
    shutil.copytree(built, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["encoders"] = {}
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FileNotFoundError, match="qanchor encode"):
        UserUDataModule(str(dst)).setup()
    assert np.load(dst / "vectors" / "bill.npy").dtype == np.float16
