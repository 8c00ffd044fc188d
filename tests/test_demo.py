"""`make demo FAST=1`'s job end to end: every stage runs and the report has every row and column."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml

from qanchor_pl.pipelines.demo import DemoConfig
from tests import RECORDED
from tests.conftest import run_qanchor
from tests.helpers.tb import images, scalars

COUNTS = "Event counts per modality and category + tabular"
HEADLINE = "+ PNA pooling, count token, future anchor and reconstruction at weight 5"
TUNED = f"Q-Anchor {HEADLINE} (prompt-tuned)"
EMBEDDING_ROWS = ["Q-Anchor (base)", TUNED, "w/o contrastive", "w/o NTP", "w/o margin filter",
                  "w/o structural tokens", HEADLINE, "w/o pretraining (prompt-tuned)"]  # fmt: skip
ROWS = ["General text embedding (MiniLM, profile text)", "Mean event vectors + tabular", COUNTS,
        "Reference: bag of events (log counts) + tabular",
        "Reference: last 7/30/90 days (mean vectors + log counts) + tabular",
        *(r for row in EMBEDDING_ROWS for r in (row, f"[{COUNTS} ; {row}]"))]  # fmt: skip


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = run_qanchor("demo", "--fast", "--out", str(out), timeout=1800)  # the whole pipeline: generous
    assert (
        "[experiment] stage timings:" in proc.stderr
        and "[experiment] time split: data 2026-01-01" in proc.stderr
    )
    report = json.loads((out / "report.json").read_text())
    assert list(report["table"]) == ROWS and len(report["scenarios"]) == 10
    for row in report["table"].values():
        assert set(row) == {*report["scenarios"], "Avg"}
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert ("Q-Anchor (base)", "Mean event vectors + tabular") in pairs and (
        TUNED,
        "w/o pretraining (prompt-tuned)",
    ) in pairs
    assert (HEADLINE, COUNTS) in pairs and (HEADLINE, "Q-Anchor (base)") in pairs
    assert all(c["lo"] <= c["hi"] for c in report["comparisons"])
    md = (out / "report.md").read_text()
    # AUC and KS tables, and the validation-vs-test table
    assert md.count(f"| {TUNED} | 0.") == 3 and "- total:" in md
    assert list(report["validation"]["table"]) == ROWS
    assert f"| {TUNED} | Q-Anchor (base) | " in md  # ... and the paired differences
    # the value tables: every embedding row beside the counts, label efficiency (tuned rows left out)
    assert [c["a"] for c in report["complementarity"]] == [f"[{COUNTS} ; {r}]" for r in EMBEDDING_ROWS]
    assert all(c["b"] == COUNTS for c in report["complementarity"])
    assert TUNED not in report["label_efficiency"] and set(report["label_efficiency"][HEADLINE]) == {
        "0.02", "0.05", "0.1", "0.25", "1.0"}  # fmt: skip
    assert "**Complementarity**" in md and "**Label efficiency**" in md
    assert (out / "complementarity.png").stat().st_size > 1000 and (out / "label_efficiency.png").exists()
    assert "train/loss_future" in scalars(out / "pretrain/counts-future-x5/tensorboard/run")
    # one TensorBoard root, runs named by what they are
    for run in (
        "pretrain/base",
        "pretrain/no-ntp",
        "tune/counts-future-x5/Takeout",
        "tune/no-pretrain/Takeout",
    ):
        version = "run-seed0" if run.startswith("tune/") else "run"  # tuning versions carry the seed
        assert scalars(out / run / "tensorboard" / version)["train/loss"], run
    assert "train/loss_ntp" not in scalars(out / "pretrain/no-ntp/tensorboard/run")
    assert "train/loss_cl" not in scalars(out / "pretrain/no-contrastive/tensorboard/run")
    # time split: pretraining data ends (cutoff + D_future window) where the labels' window begins
    pre, ev = (json.loads((out / d / "manifest.json").read_text()) for d in ("data-pretrain", "data"))
    cut_pre, cut_ev = (dt.datetime.fromisoformat(m["cutoff"]) for m in (pre, ev))
    assert cut_pre + dt.timedelta(days=pre["future_days"]) == cut_ev
    for run in ("pretrain/base", "pretrain/no-structural"):
        config = yaml.safe_load((out / run / "tensorboard" / "run" / "config.yaml").read_text())
        assert config["data"]["data"] == str(out / "data-pretrain"), run
    # the baselines' features were cached once for both evaluations (validation, test)
    cached = sorted(p.parent.name.rsplit("-", 1)[0] for p in (out / "features").glob("*/index.json"))
    assert cached == sorted(
        ["minilm-256tok", "mean-events", "category-counts", "event-counts", "time-windows"]
    )
    assert_same_as_recorded(report)
    # Fig. 7: the headline's attention by input group, base and prompt-tuned, on the validation carve
    attention = json.loads((out / "attention" / "attention.json").read_text())
    assert attention["sides"] == ["base", "tuned"] and set(attention["scenarios"]) == set(report["scenarios"])
    for entry in attention["scenarios"].values():
        assert entry["users"] > 0 and abs(sum(entry["tuned"]["overall"].values()) - 1) < 1e-4
        assert entry["base"]["overall"]["prompt"] == 0 and entry["tuned"]["overall"]["prompt"] > 0
    assert (out / "attention" / "attention.png").stat().st_size > 1000 and "| Takeout | Δ |" in (
        out / "attention" / "attention.md").read_text()  # fmt: skip
    assert "attention/heatmap" in images(out / "attention" / "tensorboard")
    again = run_qanchor("demo", "--fast", "--out", str(out), timeout=1800)  # every stage is found done
    assert "pretrain base ..." not in again.stderr


def test_demo_options_override_the_default_or_fast_sizes():
    cfg = DemoConfig(out="o", pretrain_steps=250, seed=3).resolved()
    assert (cfg.users, cfg.pretrain_steps, cfg.tune_steps, cfg.seed) == (4000, 250, 70, 3)
    fast = DemoConfig(out="o", fast=True, users=500).resolved()
    assert (fast.users, fast.pretrain_steps) == (500, 30)  # given sizes win over the fast preset
    assert "time-windows" not in cfg.baseline_names()  # the stationary world: no time-aware reference
    assert "time-windows" in DemoConfig(out="o", world="dynamic").baseline_names()
    assert DemoConfig(out="o", baselines="mean-events").baseline_names() == "mean-events"


def cpu_flags() -> str:
    """A short hash of the CPU's instruction-set flags: the same flags, the same BLAS kernels."""
    import hashlib
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return hashlib.sha256(" ".join(sorted(set(flags))).encode()).hexdigest()[:16]


def assert_same_as_recorded(report: dict) -> None:
    """The FAST demo's figures equal those recorded before issue 26 moved the data side (a refactor
    changes no number). Bit for bit where the recording's torch build, CPU kernels, CPU flags and
    library versions are this machine's; elsewhere results may round differently from the first
    step, so within 0.05."""
    from importlib.metadata import version

    import torch

    recorded = json.loads((RECORDED / "fast_demo_report.json").read_text())
    libraries = {name: version(name) for name in recorded["libraries"]}  # a fresh install may be newer
    same_machine = (recorded["torch"], recorded["cpu_capability"], recorded["cpu_flags"], recorded["libraries"]) == (
        torch.__version__, torch.backends.cpu.get_cpu_capability(), cpu_flags(), libraries)  # fmt: skip
    mine = {"table": report["table"], "validation_table": report["validation"]["table"],
            "complementarity": report["complementarity"], "label_efficiency": report["label_efficiency"]}  # fmt: skip
    if same_machine:
        assert json.loads(json.dumps(mine)) == {k: recorded[k] for k in mine}
        return
    for key in ("table", "validation_table"):
        assert set(mine[key]) == set(recorded[key])  # (the recording keeps its keys sorted)
        for row, cells in recorded[key].items():
            assert abs(mine[key][row]["Avg"]["auc"] - cells["Avg"]["auc"]) < 0.05, (key, row)
