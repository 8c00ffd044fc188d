"""Shared fixtures: small synthetic worlds built and encoded once per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.encode.dataset import encode_dataset
from data_modules.synth.world import write_world

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def raw_world(tmp_path_factory) -> Path:
    """A 300-user synthetic raw data set."""
    out = tmp_path_factory.mktemp("raw")
    write_world(out, n_users=300, seed=7)
    return out


@pytest.fixture(scope="session")
def built(raw_world, tmp_path_factory) -> Path:
    """``raw_world`` built (100 users per shard, row groups of 32) and hash-encoded."""
    out = tmp_path_factory.mktemp("data")
    build(
        BuildConfig(
            raw=str(raw_world),
            out=str(out),
            users_per_shard=100,
            row_group_size=32,
            tokenizer_vocab=1024,
            min_class_users=0,  # 300 users: the rarest scenario has no positive test user
        )
    )
    encode_dataset(out, "hash", dim=32)
    return out


def free_port() -> int:
    """A TCP port free on the loopback now, for a torchrun master."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_env() -> dict:
    """Environment for 2-process gloo runs: loopback only (gloo otherwise resolves the host name,
    which can stall in containers)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def run_qanchor(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "qanchor_pl.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"qanchor {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def pytest_collection_modifyitems(config, items):
    """GPU-only tests are skipped, with the reason, where no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def model_data(built):
    """(DataInputs, one batch of 6 users) from ``built``."""
    from data_modules.loading.datamodule import UserUDataModule
    from qanchor_pl.model.config import DataInputs

    dm = UserUDataModule(str(built), batch_size=6, buffer_size=32)
    batch = next(iter(dm.make_dataset()))
    return DataInputs(**dm.model_inputs()), batch


@pytest.fixture(scope="session")
def pretrained(built, tmp_path_factory) -> Path:
    """A pretraining checkpoint (3 steps of a small tiny model on ``built``)."""
    from tests.helpers.cli_args import pretrain_args

    run = tmp_path_factory.mktemp("pretrain") / "run"
    run_qanchor(*pretrain_args(built, run, 3))
    return run / "checkpoints" / "last.ckpt"
