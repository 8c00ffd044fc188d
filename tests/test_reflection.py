"""Reflection: every number a templated answer states is recomputed here, independently, from the
raw events the model sees (the per-modality caps applied to the user's own history / future)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter

import polars as pl

from data_modules.contract.topics import load_topics
from data_modules.dataset.manifest import Manifest
from data_modules.supervision.templated import Facts, number_key, reflect, stated_numbers


def _seen(
    raw: pl.DataFrame, caps: dict[str, int], cutoff: dt.datetime, m: Manifest
) -> tuple[pl.DataFrame, pl.DataFrame]:
    start, end = cutoff - dt.timedelta(days=m.history_days), cutoff + dt.timedelta(days=m.future_days)
    hist = raw.filter((pl.col("ts") >= start) & (pl.col("ts") < cutoff)).sort(
        "user_id", "modality", "ts", "text"
    )
    fut = raw.filter((pl.col("ts") >= cutoff) & (pl.col("ts") < end)).sort(
        "user_id", "modality", "ts", "text"
    )
    hist = pl.concat(
        [g.tail(caps[k[1]]) for k, g in hist.group_by("user_id", "modality", maintain_order=True)]
    )
    fut = pl.concat([g.head(caps[k[1]]) for k, g in fut.group_by("user_id", "modality", maintain_order=True)])
    return hist, fut


def _uqa_facts(rows: list[dict], cutoff: dt.datetime) -> set[str]:
    n = len(rows)
    counts = Counter(r["text"] for r in rows)
    to_cut = [(cutoff - r["ts"]) for r in rows]
    span = max(to_cut).days + 1
    later = sum(2 * t.total_seconds() <= span * 86400 for t in to_cut)
    facts = {n, len({r["ts"].date() for r in rows}), len(counts), min(to_cut).days, 7, span, later, n - later,
             round(100 * sum(r["ts"].isoweekday() >= 6 for r in rows) / n), sum(t <= dt.timedelta(days=7) for t in to_cut),
             *counts.values()}  # fmt: skip
    for mod in {r["modality"] for r in rows}:
        values = [r["value"] for r in rows if r["modality"] == mod and r["value"] is not None]
        if values:
            cents = sum(round(v * 100) for v in values)
            facts |= {cents / 100, cents / len(values) / 100}
    return {number_key(str(round(x, 2) if isinstance(x, float) else x)) for x in facts}


def _future_facts(fut: pl.DataFrame, future_days: int) -> set[str]:
    facts = {future_days, *fut.group_by("text").len()["len"].to_list()}
    for b in range(3):
        facts |= {int(b * future_days / 3) + 1, int((b + 1) * future_days / 3)}
    return {number_key(str(x)) for x in facts}


def test_every_number_in_every_answer_comes_from_the_events_the_model_sees(built, raw_world):
    m = Manifest.load(built)
    cutoff = dt.datetime.fromisoformat(m.cutoff)
    raw = pl.read_parquet(raw_world / "events" / "*.parquet")
    hist_all, fut_all = _seen(raw, m.max_events, cutoff, m)
    topics = {t.name: t for t in load_topics(built / "topics.json", m.event_modalities)}
    shards = pl.concat([pl.read_parquet(p) for p in sorted((built / "shards").glob("*.parquet"))])
    checked = 0
    for row in shards.iter_rows(named=True):
        u = row["user_id"]
        hist = hist_all.filter(pl.col("user_id") == u)
        for answer, source in zip(row["qa_answer"], row["qa_source"]):
            if source == "future":
                fut = fut_all.filter(pl.col("user_id") == u)
                facts, texts = _future_facts(fut, m.future_days), set(fut["text"])
            else:
                topic = topics[source.removeprefix("uqa:")]
                rows = [
                    r
                    for r in hist.iter_rows(named=True)
                    if topic.matches(r["modality"], r["category"] or "", r["text"])
                ]
                facts, texts = _uqa_facts(rows, cutoff), {r["text"] for r in rows}
                n_stated = (
                    int(re.search(r"shows (\d+) event", answer).group(1)) if "shows" in answer else None
                )
                if n_stated is not None:  # the count is of seen events: never above the caps' sum
                    assert n_stated <= sum(m.max_events.values())
            for quoted in re.findall(r'"(.*?)"(?: \(| \d|\.|;|$)', answer):
                assert quoted in texts, (u, source, quoted)
            masked = answer
            for t in sorted(texts, key=len, reverse=True):
                masked = masked.replace(f'"{t}"', " ")
            stated = stated_numbers(masked)
            assert stated, answer
            unsupported = [x for x in stated if number_key(x) not in facts]
            assert not unsupported, f"{u} / {source}: {unsupported} not in the seen events: {answer}"
            checked += 1
    assert checked > 300 * 5


def test_reflect_drops_unsupported_sentences_and_counts_reasons():
    facts = Facts(spans={"Shop 42"})
    facts.add_numbers([3])
    answer = 'The user paid 3 times. They spent 99.00 at "Shop 42". They like "Tea House". They like tea.'
    kept, dropped = reflect(answer, facts)
    assert dropped == Counter({"unsupported_number": 1, "ungrounded_quote": 1})
    assert kept == "The user paid 3 times. They like tea."


def test_reflect_keeps_grounded_answers_whatever_their_punctuation():
    """Event texts with quotes, digits and periods inside quotes are facts, not claims."""
    texts = {'Rated "The Dark Knight" 4 stars', "Ran 5.5 km. Felt good", 'Watched "Se7en" (1995)'}
    facts = Facts(spans=set(texts))
    facts.add_numbers([2, 1])
    answer = (
        'Most frequent: "Rated "The Dark Knight" 4 stars" (2 times), "Ran 5.5 km. Felt good" (1 time). '
        'Also "Watched "Se7en" (1995)" (1 time).'
    )
    kept, dropped = reflect(answer, facts)
    assert not dropped and kept == answer


def test_build_reports_answers_and_reflection_in_the_manifest(built):
    m = json.loads((built / "manifest.json").read_text())
    qa = m["qa"]
    users = m["counts"]["users"]
    assert qa["answers"]["future"] == users and qa["answers"]["uqa"] >= users
    assert set(qa["reflection"]) == {"sentences_dropped", "answers_emptied"}
    assert qa["topics"]["count"] == 72 and qa["topics"]["source"].endswith("topics.json")


def test_the_one_pass_reflection_keeps_what_the_sentence_loop_keeps():
    """The fast path (no sentence to drop) returns the text the per-sentence loop joins, on random
    answers made of numbers, quotes, sentence ends and odd whitespace."""
    import random

    from data_modules.supervision.templated import mask_quotes, reflect_by_sentence

    rng = random.Random(0)
    pieces = [
        "a",
        "word",
        " ",
        "  ",
        "\n",
        "\t",
        ".",
        "!",
        "?",
        "3",
        "4.50",
        "-2",
        '"Heat 4."',
        '"x"',
        "1.",
        "\x1f",
    ]
    facts = Facts(spans={"Heat 4.", "x"})
    facts.add_numbers([3, 4.5, -2, 1])
    compared = 0
    for _ in range(3000):
        answer = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        masked, spans = mask_quotes(answer, facts.spans)
        slow = reflect_by_sentence(masked, spans, facts)
        assert reflect(answer, facts) == slow, repr(answer)
        compared += not slow[1]  # nothing dropped: the case the fast path takes
    assert compared > 500


def test_the_plain_template_shortcut_returns_what_the_full_check_returns():
    """Templated answers skip reflection when their free words are plain and their quotes are
    whole spans (issue 27 part 4): on random, partly adversarial topic names, labels, units and
    event texts, the shortcut's answer equals the full check's, and it is taken often."""
    import dataclasses
    import random

    from data_modules.contract.modalities import ModalityMeta
    from data_modules.supervision.templated import FutureAction, TopicStats, render_future, render_topic

    rng = random.Random(1)
    bits = [
        "a",
        "Shop",
        " ",
        "  ",
        "3",
        "4.5",
        ".",
        "!",
        "?",
        '"',
        ", ",
        " (",
        "2 times), ",
        "\t",
        "x",
        "\x00",
        "",
    ]

    def words(k: int) -> str:
        return "".join(rng.choice(bits) for _ in range(rng.randint(0, k)))

    taken = 0
    for case in range(3000):
        texts = [words(4) for _ in range(3)] + ["2 times), ", ", "][: rng.randint(0, 2)]
        meta = {m: ModalityMeta(m, description=words(3) if rng.random() < 0.5 else "", unit=words(2),
                                value_kind=rng.choice(["number", "rating", "amount"])) for m in ("p", "q")}  # fmt: skip
        stats = TopicStats(
            n=rng.randint(1, 40), active_days=rng.randint(1, 9), distinct=rng.randint(1, 5),
            top=[(t, rng.randint(1, 9)) for t in rng.sample(texts, min(3, len(texts)))],
            values={m: (rng.randint(-5000, 90000), rng.randint(0, 6)) for m in rng.sample(["p", "q"], rng.randint(0, 2))},
            last_days_ago=rng.randint(0, 40), last_text=rng.choice(texts), weekend=0, last_week=rng.randint(0, 5),
            span_days=rng.randint(1, 90), later_half=0,
        )  # fmt: skip
        stats = dataclasses.replace(
            stats, weekend=rng.randint(0, stats.n), later_half=rng.randint(0, stats.n)
        )
        if case % 4 == 0:
            actions = [FutureAction(t, rng.randint(1, 9), rng.randint(0, 2)) for t in texts]
            answer, facts = render_future(actions, 30, 3)
        else:
            kind = rng.choice(["events", "recency", "trend"])
            answer, facts = render_topic(words(4) or "topic", kind, words(3) or "app", stats, meta)
        full = reflect(answer, dataclasses.replace(facts, plain=False))
        assert reflect(answer, facts) == full, repr(answer)
        taken += facts.plain and full[0] == answer
    assert taken > 300
