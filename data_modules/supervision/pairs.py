"""The build's supervision step: which events the model sees, the topic pool, and the templated QA pairs.

Facts come only from the events the model sees: per user and modality, the ``cap`` most recent
history events (exactly the ids a shard stores) for D_uqa, and the ``cap`` earliest events of the
future window for D_future (an answer never lists more of a modality than the model's budget for
it). Scenario labels are not supervision text and keep using every future event.

Calendar facts (active days, weekends) use the build's IANA time zone.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from data_modules.contract.modalities import ModalityMeta
from data_modules.contract.topics import Topic
from data_modules.supervision import templated as qa
from data_modules.supervision.topics import derive_topics

log = logging.getLogger(__name__)
_DAY_US = 86_400_000_000
#: Longest list of names the manifest keeps per report entry (the count is always complete).
REPORT_NAMES = 50


@dataclass(frozen=True)
class QASpec:
    """The build settings the QA pairs depend on."""

    history_days: int
    future_days: int
    future_bins: int = 3
    future_actions: int = 5
    topics_per_user: int = 10
    external_qa: str = "add"
    timezone: str = "UTC"


@dataclass
class QAReport:
    """What the supervision step produced and left out; saved as the manifest's ``qa`` entry."""

    answers: Counter = field(default_factory=Counter)  # by source: future, uqa, external
    dropped: Counter = field(default_factory=Counter)  # reflection: sentences dropped by reason
    emptied: int = 0  # answers with no sentence left (not written)
    topics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "answers": dict(sorted(self.answers.items())),
            "reflection": {
                "sentences_dropped": dict(sorted(self.dropped.items())),
                "answers_emptied": self.emptied,
            },
            "topics": self.topics,
        }

    def log(self) -> None:
        t = self.topics
        log.warning(
            "QA: answers %s; reflection dropped %s sentences (%s), %d answers emptied; topics: %d (%s), "
            "%d matched no user, %d categories covered by no specific topic",
            dict(self.answers), sum(self.dropped.values()), dict(self.dropped), self.emptied,
            t.get("count", 0), t.get("source"), len(t.get("unmatched", [])), t.get("uncovered_categories_count", 0),
        )  # fmt: skip


def mark_seen(ev: pl.DataFrame, caps: Mapping[str, int]) -> pl.DataFrame:
    """Sort one shard's events and flag ``seen``: the last ``cap`` history events per (user, modality)
    and the first ``cap`` future ones. Events at the same time are ordered by their own content
    (text, category, value), never by anything computed over other users (such as vocabulary ids),
    so that every partition of a build decides alone and alike."""
    keys = ["user_id", "modality", "window"]
    cap = pl.col("modality").replace_strict(dict(caps), return_dtype=pl.Int64)
    ev = ev.sort([*keys, "ts", "text", "category", "value"], nulls_last=True)
    from_end = pl.int_range(pl.len(), 0, -1).over(keys)
    from_start = pl.int_range(1, pl.len() + 1).over(keys)
    seen = pl.when(pl.col("window") == "history").then(from_end <= cap).otherwise(from_start <= cap)
    return ev.with_columns(seen.alias("seen"))


def seen_combos(frames: Sequence[pl.DataFrame | None]) -> pl.DataFrame:
    """Seen history events per distinct (modality, text, category), over all shards."""
    parts = [
        f.filter((pl.col("window") == "history") & pl.col("seen"))
        .group_by("modality", "text", "category")
        .len()
        for f in frames
        if f is not None
    ]
    return (
        pl.concat(parts)
        .group_by("modality", "text", "category")
        .agg(pl.col("len").sum().alias("count"))
        .sort("modality", "text", "category", nulls_last=True)
    )


def topic_pool(
    given: tuple[Topic, ...] | None,
    source: str | Path | None,
    event_mods: list[str],
    combos: pl.DataFrame,
    meta: Mapping[str, ModalityMeta],
    max_categories: int,
) -> tuple[tuple[Topic, ...], str]:
    """(topics, where they came from): the raw folder's (``given``, read from ``source`` and checked
    against ``event_mods`` by the plan), or a pool derived from the seen events."""
    if given is not None:
        return given, str(source)
    counts: dict[str, dict[str, int]] = {}
    for mod, cat, n in (
        combos.drop_nulls("category").group_by("modality", "category").agg(pl.col("count").sum()).iter_rows()
    ):
        counts.setdefault(mod, {})[cat] = int(n)
    return derive_topics(counts, meta, max_categories=max_categories), "derived"


def topic_map(combos: pl.DataFrame, topics: Sequence[Topic], n_users: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Which topics each distinct seen (modality, text, category) matches, and each topic's mean seen
    events per user (the relevance baseline)."""
    rows, totals = [], np.zeros(len(topics))
    for mod, text, cat, count in combos.iter_rows():
        hits = [i for i, t in enumerate(topics) if t.matches(mod, cat or "", text)]
        for i in hits:
            totals[i] += count
        if hits:
            rows.append((mod, text, cat, hits))
    table = pl.DataFrame(
        rows,
        schema={"modality": pl.String, "text": pl.String, "category": pl.String, "topic": pl.List(pl.Int32)},
        orient="row",
    )
    return table, totals / max(n_users, 1)


def topic_report(
    topics: Sequence[Topic], source: str, tmap: pl.DataFrame, means: np.ndarray, combos: pl.DataFrame
) -> dict:
    """Topics that matched no seen event, and (modality, category) pairs that no specific topic covers."""
    unmatched = [t.name for t, m in zip(topics, means) if m == 0]
    specific = {i for i, t in enumerate(topics) if t.specific}
    covered = {
        (mod, cat)
        for mod, _text, cat, hits in tmap.iter_rows()
        if cat is not None and specific.intersection(hits)
    }
    categories = (
        combos.drop_nulls("category").select("modality", "category").unique().sort("modality", "category")
    )
    uncovered = [f"{mod}/{cat}" for mod, cat in categories.iter_rows() if (mod, cat) not in covered]
    return {
        "source": source,
        "count": len(topics),
        "unmatched": unmatched[:REPORT_NAMES],
        "unmatched_count": len(unmatched),
        "uncovered_categories": uncovered[:REPORT_NAMES],
        "uncovered_categories_count": len(uncovered),
    }


# -- the QA pairs of one shard -------------------------------------------------------------------
@dataclass
class Supervision:
    """What every shard's QA pairs depend on, fixed once per build; :meth:`pairs` renders one shard's."""

    spec: QASpec
    topics: tuple[Topic, ...]
    tmap: pl.DataFrame
    means: np.ndarray
    external: pl.DataFrame | None
    cutoff: dt.datetime
    meta: Mapping[str, ModalityMeta]
    report: QAReport

    def pairs(self, users: list[str], ev: pl.DataFrame) -> dict[str, list[list[str]]]:
        return qa_pairs(self, users, ev)


def qa_pairs(sup: Supervision, users: list[str], ev: pl.DataFrame) -> dict[str, list[list[str]]]:
    """Per user (in ``users`` order): D_future first, then external pairs, then the top-k topics."""
    spec, topics, meta, report, cutoff = sup.spec, sup.topics, sup.meta, sup.report, sup.cutoff
    query: dict[str, list[str]] = {u: [] for u in users}
    answer: dict[str, list[str]] = {u: [] for u in users}
    source: dict[str, list[str]] = {u: [] for u in users}

    def add(u: str, q: str, a: str, s: str, facts: qa.Facts | None) -> None:
        if facts is not None:
            a, dropped = qa.reflect(a, facts)
            report.dropped.update(dropped)
            if not a:
                report.emptied += 1
                return
        query[u].append(q)
        answer[u].append(a)
        source[u].append(s)
        report.answers[s.split(":")[0]] += 1

    seen = ev.filter(pl.col("seen"))
    future = future_actions(spec, seen.filter(pl.col("window") == "future"), cutoff)
    for u in users:
        text, facts = qa.render_future(future.get(u, []), spec.future_days, spec.future_bins)
        add(u, qa.FUTURE_QUERY, text, "future", facts)

    ext_users: set[str] = set()
    if sup.external is not None:
        for u, q, a in sup.external.filter(pl.col("user_id").is_in(users)).iter_rows():
            add(u, q, a, "external", None)
            ext_users.add(u)
    hist = seen.filter(pl.col("window") == "history")
    for u, t, stats in topic_stats(spec, hist, topics, sup.tmap, sup.means, cutoff):
        if spec.external_qa == "replace" and u in ext_users:
            continue
        tp = topics[t]
        subject = meta[tp.modalities[0]].label if len(tp.modalities) == 1 else "platform"
        text, facts = qa.render_topic(tp.name, tp.kind, subject, stats, meta)
        add(u, tp.question, text, f"uqa:{tp.name}", facts)
    return {
        "query": [query[u] for u in users],
        "answer": [answer[u] for u in users],
        "source": [source[u] for u in users],
    }


def future_actions(spec: QASpec, fut: pl.DataFrame, cutoff: dt.datetime) -> dict[str, list[qa.FutureAction]]:
    """Frequency- and diversity-aware selection: each category's top action first, then the rest."""
    if fut.height == 0:
        return {}
    bin_width_us = spec.future_days * _DAY_US / spec.future_bins
    f = fut.with_columns(
        pl.col("category").fill_null(pl.col("modality")),
        ((pl.col("ts") - pl.lit(cutoff)).dt.total_microseconds() / bin_width_us)
        .floor()
        .cast(pl.Int32)
        .clip(0, spec.future_bins - 1)
        .alias("bin"),
    )
    per_bin = f.group_by("user_id", "category", "text", "bin").agg(pl.len().alias("c"))
    actions = (
        per_bin.sort(
            ["user_id", "category", "text", "c", "bin"], descending=[False, False, False, True, False]
        )
        .group_by("user_id", "category", "text", maintain_order=True)
        .agg(pl.col("c").sum().alias("n"), pl.col("bin").first().alias("peak"))
        .with_columns(pl.col("n").rank("ordinal", descending=True).over("user_id", "category").alias("r"))
        .sort(["user_id", "r", "n", "text"], descending=[False, False, True, False])
        .group_by("user_id", maintain_order=True)
        .head(spec.future_actions)
    )
    out: dict[str, list[qa.FutureAction]] = {}
    for u, _cat, text, n, peak, _r in actions.iter_rows():
        out.setdefault(u, []).append(qa.FutureAction(text, int(n), int(peak)))
    return out


def topic_stats(
    spec: QASpec, hist: pl.DataFrame, topics, tmap: pl.DataFrame, means: np.ndarray, cutoff: dt.datetime
):
    """Yield (user, topic index, TopicStats) for each user's k most relevant topics (seen events only)."""
    if hist.height == 0 or tmap.height == 0:
        return
    local = pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone(spec.timezone)
    to_cut = (pl.lit(cutoff) - pl.col("ts")).dt.total_microseconds()
    m = (
        hist.join(tmap, on=["modality", "text", "category"], how="inner", nulls_equal=True)
        .explode("topic")
        .rename({"topic": "t"})
        .with_columns(local.alias("local"), to_cut.alias("to_cut"))
        # days from the first matching event on record to the cutoff (the trend's window)
        .with_columns((pl.col("to_cut").max().over("user_id", "t") // _DAY_US + 1).alias("span_days"))
    )
    stats = m.group_by("user_id", "t").agg(
        pl.len().alias("n"),
        pl.col("local").dt.date().n_unique().alias("days"),
        pl.col("text").n_unique().alias("distinct"),
        (pl.col("to_cut").min() // _DAY_US).alias("last_days_ago"),
        pl.col("text").sort_by(["ts", "vid"]).last().alias("last_text"),
        (pl.col("local").dt.weekday() >= 6).sum().alias("weekend"),
        (pl.col("to_cut") <= 7 * _DAY_US).sum().alias("last_week"),
        pl.col("span_days").first(),
        (2 * pl.col("to_cut") <= pl.col("span_days") * _DAY_US).sum().alias("later_half"),
    )
    means_df = pl.DataFrame({"t": np.arange(len(means), dtype=np.int32), "mean": means})
    chosen = (
        stats.join(means_df, on="t")
        .with_columns((pl.col("n") / (pl.col("mean") + 1.0)).alias("relevance"))
        .sort(["user_id", "relevance", "t"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .head(spec.topics_per_user)
    )
    mc = m.join(chosen.select("user_id", "t"), on=["user_id", "t"])
    top = (
        mc.group_by("user_id", "t", "text")
        .agg(pl.len().alias("c"))
        .sort(["user_id", "t", "c", "text"], descending=[False, False, True, False])
        .group_by("user_id", "t", maintain_order=True)
        .head(3)
        .group_by("user_id", "t", maintain_order=True)
        .agg("text", "c")
    )
    top_lookup = {(u, t): list(zip(texts, cs)) for u, t, texts, cs in top.iter_rows()}
    values: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
    valued = (
        mc.filter(pl.col("value").is_not_null())
        .group_by("user_id", "t", "modality")
        # integer hundredths: sums do not depend on summation order
        .agg((pl.col("value") * 100).round().cast(pl.Int64).sum().alias("total"), pl.len().alias("k"))
    )
    for u, t, mod, total, k in valued.iter_rows():
        values.setdefault((u, t), {})[mod] = (int(total), int(k))
    fields = ["user_id", "t", "n", "days", "distinct", "last_days_ago", "last_text", "weekend", "last_week",
              "span_days", "later_half"]  # fmt: skip
    # plain tuples: a named row per (user, topic) costs a dict each
    for (
        u,
        t,
        n,
        days,
        distinct,
        last_days_ago,
        last_text,
        weekend,
        last_week,
        span_days,
        later_half,
    ) in chosen.select(fields).iter_rows():
        t = int(t)
        yield (
            u,
            t,
            qa.TopicStats(
                n=int(n),
                active_days=int(days),
                distinct=int(distinct),
                top=top_lookup[(u, t)],
                values=values.get((u, t), {}),
                last_days_ago=int(last_days_ago),
                last_text=last_text,
                weekend=int(weekend),
                last_week=int(last_week),
                span_days=int(span_days),
                later_half=int(later_half),
            ),
        )
