"""The measurements behind the README's reading of the demo table."""

from __future__ import annotations

import polars as pl

from data_modules.dataset.manifest import Manifest
from qanchor_pl.eval.diagnostics import main, mean_event_dimensions, scenario_mentions


def test_mean_event_dimensions_probe_all_pca_and_random_features(built):
    out = mean_event_dimensions(built, dims=(8,))
    assert set(out) == {"all", "pca8", "random8"} and out["all"]["dims"] > 8
    assert all(0.3 < v < 1 for v in (out["all"]["avg_auc"], out["pca8"], out["random8"]))


def test_scenario_mentions_count_answers_naming_the_target_events(built):
    shares = scenario_mentions(built)
    assert len(shares) == 10 and all(0 <= v <= 1 for v in shares.values())
    manifest = Manifest.load(built)
    qa = pl.concat(
        [pl.read_parquet(built / f, columns=["qa_answer", "qa_source"]) for f in manifest.shard_files]
    )
    future = qa.explode(["qa_answer", "qa_source"]).filter(pl.col("qa_source") == "future")["qa_answer"]
    login = future.str.contains("Alipay > login", literal=True).mean()  # Login's only target texts
    assert shares["Login"] == round(login, 4) and shares["Login"] > 0


def test_main_prints_both_reports(built, capsys):
    report = main(["--data", str(built)])
    assert set(report) == {"mean_event_dimensions", "d_future_mentions"}
    assert '"d_future_mentions"' in capsys.readouterr().out
