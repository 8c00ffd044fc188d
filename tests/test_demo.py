"""`make demo FAST=1`'s job end to end: every stage runs and the report has every row and column."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_qanchor
from tests.helpers.tb import scalars

ROWS = ["General text embedding (MiniLM, profile text)", "Mean event vectors + tabular", "Q-Anchor (base)",
        "Q-Anchor (prompt-tuned)", "w/o contrastive", "w/o NTP", "w/o margin filter", "w/o structural tokens",
        "w/o pretraining (prompt-tuned)"]  # fmt: skip


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = run_qanchor("demo", "--fast", "--out", str(out))
    assert "[demo] stage timings:" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["table"]) == ROWS and len(report["scenarios"]) == 10
    for row in report["table"].values():
        assert set(row) == {*report["scenarios"], "Avg"}
    md = (out / "report.md").read_text()
    assert md.count("| Q-Anchor (prompt-tuned) |") == 2 and "- total:" in md
    # one TensorBoard root, runs named by what they are
    for run in ("pretrain/base", "pretrain/no-ntp", "tune/base/Takeout", "tune/no-pretrain/Takeout"):
        assert scalars(out / run / "tensorboard" / "run")["train/loss"], run
    assert "train/loss_ntp" not in scalars(out / "pretrain/no-ntp/tensorboard/run")
    assert "train/loss_cl" not in scalars(out / "pretrain/no-contrastive/tensorboard/run")
    again = run_qanchor("demo", "--fast", "--out", str(out))  # every stage is found done
    assert "pretrain base ..." not in again.stderr
