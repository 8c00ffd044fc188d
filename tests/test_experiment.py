"""qanchor experiment on a non-payment raw folder (ratings + fitness): every stage, one report."""

from __future__ import annotations

import datetime as dt
import json
import statistics

import polars as pl
import pytest
import yaml

from data_modules.util.errors import DataError
from qanchor_pl.model.backbone import write_shaped_backbone
from qanchor_pl.pipelines.experiment import ExperimentConfig, derive_split
from tests.conftest import run_qanchor
from tests.helpers.other_world import DAYS, START, write_other_world
from tests.helpers.tb import scalars


@pytest.fixture(scope="module")
def other_raw(tmp_path_factory):
    return write_other_world(tmp_path_factory.mktemp("exp") / "raw", n_users=240)


def test_time_split_is_derived_from_the_data_and_checked(other_raw):
    split = derive_split(ExperimentConfig(raw=str(other_raw)))
    end = START + dt.timedelta(days=DAYS)  # midnight after the last event
    assert split.eval_cutoff == end - dt.timedelta(days=30) and split.label_end == end
    assert split.pretrain_cutoff == end - dt.timedelta(days=60)
    moved = derive_split(ExperimentConfig(raw=str(other_raw), eval_cutoff="2025-05-01", future_days=20))
    assert moved.eval_cutoff == dt.datetime(2025, 5, 1) and moved.pretrain_cutoff == dt.datetime(2025, 4, 11)
    with pytest.raises(
        DataError, match=r"--eval-cutoff: the label window .* goes beyond the data's last event"
    ):
        derive_split(ExperimentConfig(raw=str(other_raw), eval_cutoff="2025-05-20"))
    with pytest.raises(DataError, match=r"--pretrain-cutoff: .* pretraining answers would state the labels"):
        derive_split(ExperimentConfig(raw=str(other_raw), pretrain_cutoff="2025-04-20"))
    with pytest.raises(DataError, match=r"less than two label windows of 80 days"):
        derive_split(ExperimentConfig(raw=str(other_raw), future_days=80))


@pytest.mark.slow
def test_experiment_on_own_logs_end_to_end(other_raw, tmp_path):
    out = tmp_path / "exp"
    llm = write_shaped_backbone("tiny", "minilm", tmp_path / "llm")["out"]  # any tokenizer: its own
    (tmp_path / "qa.yaml").write_text("topics_per_user: 1\nmax_new_tokens: 4\nchunk_users: 64\ndevice: cpu\n")
    args = ["experiment", "--raw", str(other_raw), "--out", str(out), "--pretrain-steps", "12", "--tune-steps", "4",
            "--tune-batch", "32", "--variants", "base,no-ntp", "--baselines", "mean-events,category-counts,event-counts",
            "--encoder", "hash", "--qa-version", "templated+llm", "--qa-model", llm,
            "--qa-recipe", str(tmp_path / "qa.yaml")]  # fmt: skip
    proc = run_qanchor(*args)
    assert "[experiment] time split: data 2025-01-01" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["scenarios"] == ["Drama", "SciFi", "Runner"]
    counts = "Event counts per modality and category + tabular"
    embedded = ["Q-Anchor (base)", "Q-Anchor (prompt-tuned)", "w/o NTP", "w/o pretraining (prompt-tuned)"]
    assert list(report["table"]) == [
        "Mean event vectors + tabular", counts, "Reference: bag of events (log counts) + tabular",
        *(r for row in embedded for r in (row, f"[{counts} ; {row}]")),  # each beside the counts too
    ]  # fmt: skip
    assert {(c["a"], c["b"]) for c in report["comparisons"]} >= {("Q-Anchor (base)", "Mean event vectors + tabular"),
                                                                ("w/o NTP", "Q-Anchor (base)")}  # fmt: skip
    # the validation table: every row, probed inside the train users only
    assert list(report["validation"]["table"]) == list(report["table"])
    assert json.loads((out / "validation" / "metrics.json").read_text())["split"] == "validation"
    assert "**Validation vs test**" in (out / "report.md").read_text()
    assert report["config"]["threads"] == 2  # pinned: the table does not depend on the machine's cores
    split = report["time_split"]
    assert split["pretrain_cutoff"] < split["eval_cutoff"] < split["label_end"]
    pre, ev = (json.loads((out / d / "manifest.json").read_text()) for d in ("data-pretrain", "data"))
    assert pre["modalities"] == ["rate", "workout", "tabular"] and pre["qa"]["topics"]["source"] == "derived"
    assert dt.datetime.fromisoformat(pre["cutoff"]) + dt.timedelta(days=30) == dt.datetime.fromisoformat(
        ev["cutoff"]
    )
    assert scalars(out / "pretrain/base/tensorboard/run")["train/loss"]
    probe = scalars(
        out / "pretrain/base/tensorboard/run/probe-test-Q-Anchor_base_"
    )  # written back by evaluate
    assert probe["hp/probe_avg_auc"][0][1] == pytest.approx(report["table"]["Q-Anchor (base)"]["Avg"]["auc"])
    assert pre["qa"]["versions"]["llm"]["counts"]["prompts"] == pre["counts"]["users"]  # one topic each
    config = yaml.safe_load((out / "pretrain/base/tensorboard/run/config.yaml").read_text())
    assert config["data"]["qa_version"] == "templated+llm"
    for name in ("Drama", "SciFi", "Runner"):
        assert (out / "tune/base" / name / "prompt/prompt.json").exists()
    again = run_qanchor(*args)  # every stage is found done
    assert "pretrain base ..." not in again.stderr and "build + encode done" in again.stderr


def test_seeds_run_whole_experiments_and_summarise_them(other_raw, tmp_path):
    out = tmp_path / "seeds"
    run_qanchor("experiment", "--raw", str(other_raw), "--out", str(out), "--pretrain-steps", "4", "--tune-steps", "2",
                "--tune-batch", "32", "--variants", "base", "--baselines", "mean-events", "--encoder", "hash",
                "--probe-c", "1.0", "--seed", "5", "--seeds", "2")  # fmt: skip
    reports = [json.loads((out / f"seed-{s}" / "report.json").read_text()) for s in (5, 6)]
    assert [r["config"]["seed"] for r in reports] == [5, 6]
    # each seed draws its own train/test users
    tests = [pl.read_parquet(out / f"seed-{s}/data/benchmarks/Drama.parquet").filter(pl.col("split") == "test")
             for s in (5, 6)]  # fmt: skip
    assert set(tests[0]["user_id"]) != set(tests[1]["user_id"])
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [5, 6] and set(summary["rows"]) == set(reports[0]["table"])
    for name, row in summary["rows"].items():
        aucs = [r["table"][name]["Avg"]["auc"] for r in reports]
        assert row["auc"] == aucs and abs(row["auc_mean"] - statistics.fmean(aucs)) < 1e-12
        assert abs(row["auc_sd"] - statistics.stdev(aucs)) < 1e-12
    (cmp,) = [c for c in summary["comparisons"]
              if (c["a"], c["b"]) == ("Q-Anchor (prompt-tuned)", "Mean event vectors + tabular")]  # fmt: skip
    assert cmp["deltas"] == [next(c["delta"] for c in r["comparisons"] if (c["a"], c["b"]) == (cmp["a"], cmp["b"]))
                             for r in reports]  # fmt: skip
    assert len(cmp["deltas"]) == 2 and cmp["above_0"] + cmp["below_0"] <= 2
    # the seeds' splits differ, their histories do not: one cached copy of the baseline's features
    assert len(list((out / "features").glob("mean-events-*/index.json"))) == 1
    md = (out / "seeds.md").read_text()
    assert "2 seeds (5, 6)" in md and "| Q-Anchor (prompt-tuned) | 0." in md


def test_label_window_beyond_the_data_is_a_one_line_error(other_raw, tmp_path):
    proc = run_qanchor(
        "experiment",
        "--raw",
        str(other_raw),
        "--out",
        str(tmp_path / "x"),
        "--eval-cutoff",
        "2025-06-01",
        check=False,
    )
    assert proc.returncode == 2 and "error: --eval-cutoff: the label window" in proc.stderr
