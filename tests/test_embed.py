"""`qanchor embed`: KV-cache and full paths agree, parts resume after a kill, DDP writes per rank."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_qanchor
from tests.helpers.cli_args import tune_args

SCEN = "Takeout,Login,Money"


def _rows(out) -> dict[tuple[str, str], np.ndarray]:
    t = pq.ParquetDataset(out / "parts").read()
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    keys = list(zip(t.column("user_id").to_pylist(), t.column("scenario").to_pylist()))
    assert len(keys) == len(set(keys)), "a (user, scenario) pair was written twice"
    return dict(zip(keys, emb))


def _users(built) -> set[str]:
    return {
        u
        for p in (built / "shards").glob("*.parquet")
        for u in pq.read_table(p, columns=["user_id"]).column(0).to_pylist()
    }


def embed_args(model, built, out, *extra):
    return ["embed", "--model", str(model), "--data", str(built), "--scenarios", SCEN, "--out", str(out),
            "--batch-size", "16", "--part-batches", "2", "--accelerator", "cpu", *extra]  # fmt: skip


def test_cached_and_uncached_embeddings_agree_and_cover_everyone(built, pretrained, tmp_path):
    report = json.loads(run_qanchor(*embed_args(pretrained, built, tmp_path / "kv")).stdout)
    run_qanchor(*embed_args(pretrained, built, tmp_path / "full", "--kv_cache", "false"))
    kv, full = _rows(tmp_path / "kv"), _rows(tmp_path / "full")
    users = _users(built)
    assert set(kv) == {(u, s) for u in users for s in SCEN.split(",")} == set(full)
    worst = max(float(np.abs(kv[k] - full[k]).max()) for k in kv)
    assert worst <= 1e-5, worst
    assert report["rows"] == len(users) * 3
    manifest = json.loads((tmp_path / "kv" / "manifest.json").read_text())
    assert manifest["rows"] == len(users) * 3 and manifest["job"]["kv_cache"] is True
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in kv.values())


def test_tuned_prompts_change_only_their_scenarios(built, pretrained, tmp_path):
    run_qanchor(*tune_args(built, pretrained, tmp_path / "tune", 3, "--data.scenario", "Takeout"))
    missing = run_qanchor(
        *embed_args(pretrained, built, tmp_path / "e1", "--prompts", str(tmp_path / "tune")), check=False
    )
    assert missing.returncode != 0 and "no tuned prompt for scenario 'Login'" in missing.stderr
    args = ["embed", "--model", str(pretrained), "--data", str(built), "--scenarios", "Takeout",
            "--batch-size", "16", "--accelerator", "cpu"]  # fmt: skip
    run_qanchor(*args, "--out", str(tmp_path / "tuned"), "--prompts", str(tmp_path / "tune"))
    run_qanchor(*args, "--out", str(tmp_path / "base"))
    tuned, base = _rows(tmp_path / "tuned"), _rows(tmp_path / "base")
    assert tuned.keys() == base.keys()
    assert max(float(np.abs(tuned[k] - base[k]).max()) for k in tuned) > 1e-3


@pytest.mark.slow
def test_killed_embedding_job_resumes_and_writes_each_pair_once(built, pretrained, tmp_path):
    out = tmp_path / "out"
    args = embed_args(
        pretrained, built, out, "--part-batches", "1", "--batch-size", "8", "--kv_cache", "false"
    )
    proc = subprocess.Popen([sys.executable, "-m", "qanchor_pl.cli", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list((out / "parts").glob("*.parquet"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(list((out / "parts").glob("*.parquet")))
    assert not (out / "manifest.json").exists()
    report = json.loads(run_qanchor(*args).stdout)
    assert report["rank0_resumed_at_part"] == before > 0
    rows = _rows(out)  # asserts no duplicates
    assert set(rows) == {(u, s) for u in _users(built) for s in SCEN.split(",")}
    changed = run_qanchor(*embed_args(pretrained, built, out, "--batch-size", "32"), check=False)
    assert changed.returncode != 0 and "different embedding job" in changed.stderr


@pytest.mark.slow
def test_two_process_embedding_writes_one_part_set_per_rank(built, pretrained, tmp_path):
    run_qanchor(*embed_args(pretrained, built, tmp_path / "ddp", "--devices", "2"))
    ranks = {p.name.split("-")[1] for p in (tmp_path / "ddp" / "parts").glob("*.parquet")}
    assert ranks == {"r000", "r001"}
    assert set(_rows(tmp_path / "ddp")) == {(u, s) for u in _users(built) for s in SCEN.split(",")}
