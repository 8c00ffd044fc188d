"""Exact mid-epoch resume with real Trainer runs: 1 or 2 ranks (CPU DDP), 0 or 2 workers.

Stopping after step k and resuming from that checkpoint must consume exactly the samples that an
uninterrupted run consumes from step k+1 on, and every user once per epoch across all ranks; also
when k is an epoch's last step.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ROOT

BATCH = 16


def _job(data, out, ckpt, steps, devices, workers, resume=False, window=0):
    cmd = [
        sys.executable, str(ROOT / "tests/helpers/resume_job.py"), "--data", str(data), "--out", str(out),
        "--ckpt-dir", str(ckpt), "--max-steps", str(steps), "--devices", str(devices), "--workers", str(workers),
        "--batch-size", str(BATCH), "--length-window", str(window),
    ] + (["--resume"] if resume else [])  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _seen(out, rank):
    return json.loads((out / f"seen-rank{rank}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "devices,workers,stop_at,window",
    # the length-balanced cases (window 3, 4) stand in for their plain twins: the same plan, one step more
    [(1, 0, 7, 0), (1, 2, 23, 0), (2, 0, 11, 0), (2, 2, 5, 3), (1, 2, None, 4), (2, 2, None, 0)],
)  # fmt: skip
def test_resume_consumes_exactly_the_remaining_samples(built, tmp_path, devices, workers, stop_at, window):
    """``stop_at=None``: after the first epoch's last batch (the saved pass is finished);
    ``window``: length-balanced batches (data.length_window)."""
    n_users = sum(pq.ParquetFile(p).metadata.num_rows for p in (built / "shards").glob("*.parquet"))
    steps_per_epoch = -(-(n_users // devices) // BATCH)
    total = steps_per_epoch + 6  # crosses an epoch boundary
    stop_at = steps_per_epoch if stop_at is None else stop_at
    assert stop_at < total

    _job(built, tmp_path / "full", tmp_path / "ck_full", total, devices, workers, window=window)
    _job(built, tmp_path / "part", tmp_path / "ck", stop_at, devices, workers, window=window)
    _job(built, tmp_path / "rest", tmp_path / "ck", total, devices, workers, resume=True, window=window)

    epoch_users = []
    for rank in range(devices):
        full, part, rest = (
            _seen(tmp_path / "full", rank),
            _seen(tmp_path / "part", rank),
            _seen(tmp_path / "rest", rank),
        )
        assert len(full) == total and len(part) == stop_at
        assert part == full[:stop_at]
        assert rest == full[stop_at:], f"rank {rank}: resumed run consumed different samples"
        w_full = torch.load(tmp_path / "full" / f"weights-rank{rank}.pt")
        w_rest = torch.load(tmp_path / "rest" / f"weights-rank{rank}.pt")
        for k in w_full:
            assert torch.allclose(w_full[k], w_rest[k], atol=1e-6, rtol=0)
        epoch_users += [u for step in full[:steps_per_epoch] for u in step]
    # one epoch across all ranks: every user exactly once
    assert sorted(epoch_users) == sorted(set(epoch_users)) and len(epoch_users) == n_users
