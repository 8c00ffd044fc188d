"""``qanchor build`` outputs: shards, vocabularies, benchmarks, manifest; determinism; options."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.scenarios import Scenario, save_scenarios
from data_modules.dataset.manifest import Manifest
from data_modules.dataset.schemas import SCHEMA_VERSION
from data_modules.synth.catalogue import SCENARIOS
from tests.conftest import run_qanchor


def _shards(root):
    return pl.concat([pl.read_parquet(p) for p in sorted((root / "shards").glob("*.parquet"))])


def test_manifest_lists_every_file_with_rows_and_checksums(built):
    m = Manifest.load(built)
    m.verify(built)  # raises on any mismatch
    on_disk = {
        str(p.relative_to(built)) for p in built.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert on_disk == set(m.files)
    assert m.schema_version == SCHEMA_VERSION and m.modalities[-1] == "tabular"
    shards = m.shard_files
    assert len(shards) == 3 and sum(m.files[s]["rows"] for s in shards) == m.counts["users"] == 300
    for s in shards:
        pf = pq.ParquetFile(built / s)
        assert pf.metadata.num_rows == m.files[s]["rows"]
        assert max(pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)) <= 32
    assert m.config["users_per_shard"] == 100


def test_event_ids_are_the_most_recent_capped_history_in_order(built, raw_world):
    m = Manifest.load(built)
    cutoff = dt.datetime.fromisoformat(m.cutoff)
    raw = pl.read_parquet(raw_world / "events" / "*.parquet")
    df = _shards(built)
    vocab = {mod: pl.read_parquet(built / "vocab" / f"{mod}.parquet") for mod in m.event_modalities}
    for row in df.head(20).iter_rows(named=True):
        u = row["user_id"]
        for mod in m.event_modalities:
            hist = raw.filter(
                (pl.col("user_id") == u)
                & (pl.col("modality") == mod)
                & (pl.col("ts") < cutoff)
                & (pl.col("ts") >= cutoff - dt.timedelta(days=90))
            ).sort("ts")
            texts = vocab[mod]["text"].to_list()
            got = [texts[i] for i in row[f"ev_{mod}"]]
            assert got == hist["text"].tail(m.max_events[mod]).to_list()
            assert row[f"n_{mod}"] == hist.height
            assert row[f"ts_{mod}"] == sorted(row[f"ts_{mod}"])


def test_vocab_is_most_frequent_first_with_counts(built):
    v = pl.read_parquet(built / "vocab" / "bill.parquet")
    assert v["id"].to_list() == list(range(v.height))
    assert v["count"].to_list() == sorted(v["count"].to_list(), reverse=True)
    assert v["text"].n_unique() == v.height


def test_tabular_is_standardised_with_saved_statistics(built, raw_world):
    m = Manifest.load(built)
    x = np.stack(_shards(built)["tabular"].to_numpy())
    assert x.shape == (300, len(m.tabular_features))
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    users = pl.read_parquet(raw_world / "users.parquet")
    np.testing.assert_allclose(m.tabular_mean, users.select(m.tabular_features).to_numpy().mean(0), rtol=1e-9)


def test_qa_pairs_future_first_then_k_topics(built):
    df = _shards(built)
    for row in df.iter_rows(named=True):
        assert row["qa_source"][0] == "future"
        assert row["qa_query"][0] == "What will the user most likely do next?"
        topics = [s for s in row["qa_source"] if s.startswith("uqa:")]
        assert 1 <= len(topics) <= 10 and len(set(topics)) == len(topics)
    # users differ in which topics are most relevant to them
    assert df["qa_source"].list.join("|").n_unique() > 50


def test_benchmark_labels_follow_the_rule_with_a_user_disjoint_split(built, raw_world):
    m = Manifest.load(built)
    cutoff = dt.datetime.fromisoformat(m.cutoff)
    raw = pl.read_parquet(raw_world / "events" / "*.parquet")
    fut = raw.filter((pl.col("ts") >= cutoff) & (pl.col("ts") < cutoff + dt.timedelta(days=30)))
    kept = set(_shards(built)["user_id"])
    test_sets = []
    for s in SCENARIOS:
        b = pl.read_parquet(built / "benchmarks" / f"{s.name}.parquet")
        assert set(b["user_id"]) == kept
        pos = set(fut.filter(pl.col("category").is_in(list(s.categories)))["user_id"]) & kept
        assert set(b.filter(pl.col("label") == 1)["user_id"]) == pos
        test_sets.append(set(b.filter(pl.col("split") == "test")["user_id"]))
    assert all(t == test_sets[0] for t in test_sets)  # same users are test users everywhere
    assert 0.2 < len(test_sets[0]) / len(kept) < 0.4


def test_build_is_deterministic(raw_world, built, tmp_path):
    build(
        BuildConfig(
            min_class_users=0,
            raw=str(raw_world),
            out=str(tmp_path),
            users_per_shard=100,
            row_group_size=32,
            tokenizer_vocab=1024,
        )
    )
    a, b = Manifest.load(built), Manifest.load(tmp_path)
    for name, entry in b.files.items():
        assert a.files[name]["sha256"] == entry["sha256"], name


def test_any_modality_set_works_without_tabular(tmp_path):
    events = pa.table(
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "modality": ["pay", "chat", "pay", "pay", "chat"],
            "ts": pa.array([dt.datetime(2026, 1, d) for d in (2, 3, 4, 5, 6)], pa.timestamp("ms")),
            "text": ["bought tea", "said hi", "bought tea", "bought cake", "said bye"],
        }
    )
    raw = tmp_path / "raw"
    (raw / "events").mkdir(parents=True)
    pq.write_table(events, raw / "events" / "e.parquet")
    save_scenarios(raw / "scenarios.json", [Scenario("Tea", "Will the user buy tea?", "Food", ("pay",))])
    m = build(
        BuildConfig(min_class_users=0, raw=str(raw), out=str(tmp_path / "data"), modalities="pay,chat", cutoff="2026-01-05",
                    history_days=10, future_days=5, tokenizer_vocab=300)
    )  # fmt: skip
    assert m.event_modalities == ["pay", "chat"] and m.tabular_features == []
    assert m.counts["users"] == 2  # c has only future events: a counted skip
    assert m.skipped["users_without_history"] == 1
    df = _shards(tmp_path / "data")
    assert set(df.columns) >= {"ev_pay", "ev_chat", "tabular"}


def test_external_qa_pairs_are_added_or_replace_templated_ones(raw_world, tmp_path):
    qa = pa.table({"user_id": ["u0000001", "u0000002"], "query": ["Q1?", "Q2?"], "answer": ["A1.", "A2."]})
    pq.write_table(qa, tmp_path / "qa.parquet")
    for mode in ("add", "replace"):
        out = tmp_path / mode
        build(
            BuildConfig(
                min_class_users=0,
                raw=str(raw_world),
                out=str(out),
                qa=str(tmp_path / "qa.parquet"),
                external_qa=mode,
                tokenizer_vocab=500,
            )
        )
        row = _shards(out).filter(pl.col("user_id") == "u0000001").row(0, named=True)
        assert "Q1?" in row["qa_query"] and row["qa_answer"][row["qa_query"].index("Q1?")] == "A1."
        has_uqa = any(s.startswith("uqa:") for s in row["qa_source"])
        assert has_uqa == (mode == "add")


def test_labels_file_overrides_the_rule(raw_world, tmp_path):
    users = pl.read_parquet(raw_world / "users.parquet")["user_id"].to_list()[:50]
    labels = pa.table({"user_id": users, "scenario": ["Fraud"] * 50, "label": [i % 2 for i in range(50)]})
    pq.write_table(labels, tmp_path / "labels.parquet")
    m = build(
        BuildConfig(
            min_class_users=0,
            raw=str(raw_world),
            out=str(tmp_path / "d"),
            labels=str(tmp_path / "labels.parquet"),
            tokenizer_vocab=500,
        )
    )
    b = pl.read_parquet(tmp_path / "d" / "benchmarks" / "Fraud.parquet")
    assert b.height == 50 and b["label"].sum() == 25
    assert m.counts["benchmarks"]["Fraud"]["source"] == "labels"
    assert m.counts["benchmarks"]["Takeout"]["source"] == "rule"


def test_cli_synth_build_encode_chain(tmp_path):
    run_qanchor("synth", "--out", str(tmp_path / "raw"), "--users", "120", "--seed", "1")
    out = run_qanchor("build", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "d"), "--max-events", "bill=4,search=2",
                      "--tokenizer-vocab", "400")  # fmt: skip
    assert json.loads(out.stdout)["counts"]["users"] == 120
    m = Manifest.load(tmp_path / "d")
    assert m.max_events["bill"] == 4 and m.max_events["search"] == 2 and m.max_events["mini"] == 16
    assert max(len(x) for x in _shards(tmp_path / "d")["ev_bill"].to_list()) == 4
    enc = json.loads(run_qanchor("encode", "--data", str(tmp_path / "d"), "--encoder", "hash").stdout)
    assert enc["dim"] == 64


@pytest.mark.parametrize("caps", ["paper"])
def test_paper_caps_parse(caps):
    from data_modules.builder.caps import PAPER_CAPS, parse_caps

    assert parse_caps(caps) == PAPER_CAPS
