"""Bring your own logs: a movie-ratings + fitness data set builds with domain-neutral supervision text."""

from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.contract.topics import topic
from data_modules.util.errors import DataError
from tests.conftest import run_qanchor
from tests.helpers.other_world import write_other_world


@pytest.fixture(scope="module")
def other_raw(tmp_path_factory):
    return write_other_world(tmp_path_factory.mktemp("other") / "raw")


@pytest.fixture(scope="module")
def other_built(other_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("other-data")
    build(BuildConfig(raw=str(other_raw), out=str(out), users_per_shard=100, tokenizer_vocab=600))
    return out


def _answers(data) -> pl.DataFrame:
    shards = pl.read_parquet(data / "shards" / "*.parquet", columns=["user_id", "qa_answer", "qa_source"])
    return shards.explode("qa_answer", "qa_source")


def test_modalities_come_from_the_data_and_its_metadata(other_built):
    m = json.loads((other_built / "manifest.json").read_text())
    assert m["modalities"] == ["rate", "workout", "tabular"]
    assert (
        m["modality_meta"]["rate"]["unit"] == "stars"
        and m["modality_meta"]["workout"]["value_kind"] == "duration"
    )


def test_no_currency_and_units_from_metadata(other_built):
    answers = _answers(other_built)["qa_answer"].to_list()
    assert not [a for a in answers if re.search(r"\b(CNY|USD|EUR|RMB)\b|[$€¥]", a)]
    assert any("stars" in a and "Average rating" in a for a in answers)
    assert any(re.search(r"Durations: [\d.]+ minutes in total", a) for a in answers)


def test_without_metadata_a_value_is_a_plain_number(tmp_path):
    raw = write_other_world(tmp_path / "raw", n_users=60, meta=False)
    build(BuildConfig(raw=str(raw), out=str(tmp_path / "d"), tokenizer_vocab=400))
    answers = _answers(tmp_path / "d")["qa_answer"].to_list()
    values = [a for a in answers if "Values:" in a]
    assert values and not any("Average rating" in a or "Durations" in a for a in answers)
    assert all(re.search(r"Values: [\d.]+ in total, [\d.]+ on average\.", a) for a in values)


def test_derived_topic_pool_and_its_report(other_built):
    topics = json.loads((other_built / "topics.json").read_text())
    names = {t["name"] for t in topics}
    assert {
        "movie ratings activity",
        "movie ratings recency",
        "movie ratings trend",
        "workouts trend",
    } <= names
    assert {"movie ratings: Drama", "movie ratings: Sci-Fi", "workouts: running"} <= names
    qa = json.loads((other_built / "manifest.json").read_text())["qa"]
    assert qa["topics"]["source"] == "derived" and qa["topics"]["count"] == len(topics)
    assert qa["topics"]["uncovered_categories_count"] == 0 and qa["topics"]["unmatched_count"] == 0
    sources = _answers(other_built)["qa_source"].to_list()
    assert qa["answers"]["uqa"] == sum(s.startswith("uqa:") for s in sources)
    assert qa["answers"]["future"] == sum(s == "future" for s in sources)


def test_topics_match_whole_words_only():
    games = topic("mobile gaming", "Does the user play mobile games?", ["game"])
    pay = topic("payments", "How does the user pay?", ["pay", "payment"])
    live = topic("live music", "Concerts?", ["live"])
    assert not games.matches("rate", "Sci-Fi", 'Rated "The Hunger Games" 4 stars')
    assert games.matches("mini", "mini_game", "Opened mini program Happy Match")  # "_" separates words
    assert not games.matches("mini", "mini_games", "Opened mini program Happy Match")
    assert not pay.matches("rate", "Drama", 'Rated "Payday Heist" 3 stars')
    assert not live.matches("bill", "takeout", "Paid 20-50 CNY at KFC Delivery")
    assert live.matches("bill", "concert", "Paid at Maoyan Live Show")
    assert topic("x", "q?", ["dark knight"]).matches("rate", "Action", 'Rated "The Dark Knight" 4 stars')


def test_a_user_topic_file_reports_unmatched_topics_and_uncovered_categories(other_raw, tmp_path):
    topics = [
        {"name": "drama fans", "question": "Does the user like dramas?", "categories": ["Drama"], "modalities": ["rate"]},
        {"name": "gamers", "question": "Does the user play games?", "keywords": ["game"]},
        {"name": "payments", "question": "Does the user pay?", "keywords": ["pay"], "modalities": ["workout"]},
    ]  # fmt: skip
    (tmp_path / "topics.json").write_text(json.dumps(topics))
    m = build(
        BuildConfig(
            raw=str(other_raw),
            out=str(tmp_path / "d"),
            topics=str(tmp_path / "topics.json"),
            tokenizer_vocab=600,
        )
    )
    report = m.qa["topics"]
    # "The Hunger Games" is not "game"; "Pay It Forward" is a rating, outside the topic's modalities
    assert report["unmatched"] == ["gamers", "payments"]
    assert (
        "rate/Action" in report["uncovered_categories"]
        and "workout/running" in report["uncovered_categories"]
    )
    assert "rate/Drama" not in report["uncovered_categories"]
    assert {s for s in _answers(tmp_path / "d")["qa_source"].to_list() if s.startswith("uqa:")} == {
        "uqa:drama fans"
    }


def test_timezone_moves_calendar_facts_and_is_recorded(other_raw, tmp_path):
    utc = build(BuildConfig(raw=str(other_raw), out=str(tmp_path / "utc"), tokenizer_vocab=600))
    tokyo = build(
        BuildConfig(raw=str(other_raw), out=str(tmp_path / "tok"), timezone="Asia/Tokyo", tokenizer_vocab=600)
    )
    assert utc.timezone == "UTC" and tokyo.timezone == "Asia/Tokyo"
    assert tokyo.config["timezone"] == "Asia/Tokyo"
    # the default cutoff is local midnight: 9 hours earlier in UTC for Tokyo
    assert utc.cutoff.endswith("T00:00:00") and tokyo.cutoff.endswith("T15:00:00")

    def weekend(d):
        return sorted(re.findall(r"(\d+)% fell on weekends", " ".join(_answers(d)["qa_answer"].to_list())))

    assert weekend(tmp_path / "utc") != weekend(tmp_path / "tok")


@pytest.mark.parametrize(
    "case, message",
    [
        ("absent modality", r"modalities\.json, entry 'radio': names modality 'radio', which is not among"),
        ("unit without values", r"modalities\.json, entry 'extra': modality 'extra' has a unit/value_kind but its events carry no values"),
        ("unknown topic modality", r"topics\.json, column 'modalities', entry 't': unknown modality 'bill'"),
        ("bad timezone", r"--timezone: unknown time zone 'Mars/Base'"),
    ],
)  # fmt: skip
def test_bad_metadata_and_topics_name_file_and_field(other_raw, tmp_path, case, message):
    raw = tmp_path / "raw"
    shutil.copytree(other_raw, raw)
    meta = json.loads((raw / "modalities.json").read_text())
    kw = {}
    if case == "absent modality":
        meta.append({"name": "radio", "description": "radio"})
    elif case == "unit without values":
        events = pl.read_parquet(raw / "events" / "*.parquet")
        extra = events.head(5).with_columns(
            pl.lit("extra").alias("modality"), pl.lit(None, pl.Float64).alias("value")
        )
        pl.concat([events, extra]).write_parquet(raw / "events" / "part-00000.parquet")
        meta.append({"name": "extra", "unit": "kg"})
    elif case == "unknown topic modality":
        (raw / "topics.json").write_text(
            json.dumps([{"name": "t", "question": "q?", "modalities": ["bill"]}])
        )
    else:
        kw["timezone"] = "Mars/Base"
    (raw / "modalities.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        build(BuildConfig(raw=str(raw), out=str(tmp_path / "d"), tokenizer_vocab=400, **kw))
    if case == "absent modality":  # the command line: one line, exit 2
        proc = run_qanchor("build", "--raw", str(raw), "--out", str(tmp_path / "cli"), check=False)
        assert proc.returncode == 2 and "error:" in proc.stderr and "modalities.json" in proc.stderr
