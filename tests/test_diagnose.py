"""qanchor diagnose: a validation-split probe at every stage of a real (small) pretrained model."""

from __future__ import annotations

import json

from tests.conftest import run_qanchor
from tests.helpers.tb import scalars


def test_diagnose_writes_a_table_per_stage_and_tensorboard(built, pretrained, tmp_path):
    out = tmp_path / "diag"
    result = json.loads(
        run_qanchor(
            "diagnose",
            "--model",
            str(pretrained),
            "--data",
            str(built),
            "--out",
            str(out),
            "--scenarios",
            "Takeout,Login",
            "--probe-c",
            "1.0",
        ).stdout  # fmt: skip
    )
    report = json.loads((out / "diagnose.json").read_text())
    assert list(report["stages"]) == [
        "mean event features",
        "modality tokens",
        "USER_EMB hidden state",
        "u (after the head)",
    ]
    assert report["scenarios"] == ["Takeout", "Login"] and "validation: 20%" in report["split"]
    for per in report["stages"].values():
        assert set(per) == {"Takeout", "Login", "Avg"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in per.values())
    assert result["avg_auc"] == {s: per["Avg"] for s, per in report["stages"].items()}
    md = (out / "diagnose.md").read_text()
    assert md.count("\n| ") == 5 and "| u (after the head) |" in md
    tags = scalars(out / "tensorboard")
    assert set(tags) == {f"diagnose/{s}" for s in report["stages"]}
