"""Reflection: every number a generated answer states is recomputed here, independently, from the
raw events of that user (D_uqa from the history window, D_future from the future window)."""

from __future__ import annotations

import datetime as dt
import re

import polars as pl

from data_modules.manifest import Manifest
from data_modules.qa import numbers_in, reflect
from data_modules.topics import SEED_TOPICS


def _user_facts_uqa(hist: pl.DataFrame, topic, cutoff: dt.datetime, days: int) -> set[str]:
    rows = [
        r for r in hist.iter_rows(named=True) if topic.matches(r["modality"], r["category"] or "", r["text"])
    ]
    n = len(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["text"]] = counts.get(r["text"], 0) + 1
    values = [r["value"] for r in rows if r["value"] is not None]
    cents = sum(round(v * 100) for v in values)
    last = max(r["ts"] for r in rows)
    facts = {
        str(days), str(n), f"{n / (days / 7):.1f}", str(len({r['ts'].date() for r in rows})), str(len(counts)),
        str(int((cutoff - last).total_seconds() // 86400)),
        str(round(100 * sum(r["ts"].isoweekday() >= 6 for r in rows) / n)),
    }  # fmt: skip
    facts |= {str(c) for c in counts.values()}
    if values:
        facts |= {f"{cents / 100:.2f}", f"{cents / len(values) / 100:.2f}"}
    return facts


def _user_facts_future(fut: pl.DataFrame, future_days: int) -> set[str]:
    facts = {str(future_days)}
    counts = fut.group_by("text").len()["len"].to_list()
    facts |= {str(c) for c in counts}
    for b in range(3):
        facts |= {str(int(b * future_days / 3) + 1), str(int((b + 1) * future_days / 3))}
    return facts


def test_every_number_in_every_answer_is_supported_by_the_profile(built, raw_world):
    m = Manifest.load(built)
    cutoff = dt.datetime.fromisoformat(m.cutoff)
    raw = pl.read_parquet(raw_world / "events" / "*.parquet")
    hist_all = raw.filter(
        (pl.col("ts") < cutoff) & (pl.col("ts") >= cutoff - dt.timedelta(days=m.history_days))
    )
    fut_all = raw.filter(
        (pl.col("ts") >= cutoff) & (pl.col("ts") < cutoff + dt.timedelta(days=m.future_days))
    )
    topics = {t.name: t for t in SEED_TOPICS}
    shards = pl.concat([pl.read_parquet(p) for p in sorted((built / "shards").glob("*.parquet"))])
    checked = 0
    for row in shards.iter_rows(named=True):
        u = row["user_id"]
        hist = hist_all.filter(pl.col("user_id") == u)
        for answer, source in zip(row["qa_answer"], row["qa_source"]):
            if source == "future":
                facts = _user_facts_future(fut_all.filter(pl.col("user_id") == u), m.future_days)
            else:
                facts = _user_facts_uqa(hist, topics[source.removeprefix("uqa:")], cutoff, m.history_days)
                # quoted event texts must be the user's own history events
                for quoted in re.findall(r'"([^"]*)"', answer):
                    assert quoted in set(hist["text"]), (u, quoted)
            stated = numbers_in(answer)
            assert stated, answer
            unsupported = [x for x in stated if x not in facts]
            assert not unsupported, f"{u} / {source}: {unsupported} not in the profile: {answer}"
            checked += 1
    assert checked > 300 * 5


def test_reflect_drops_unsupported_sentences():
    answer = 'The user paid 3 times. They spent 99.00 CNY at "Shop 42". They like tea.'
    kept, dropped = reflect(answer, {"3"})
    assert dropped == 1
    assert kept == "The user paid 3 times. They like tea."
