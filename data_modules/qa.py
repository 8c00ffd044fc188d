"""Templated QA pairs of UserU: D_future answers and D_uqa answers, plus the reflection check.

Answers only ever state numbers computed from the user's own profile (the paper's reflection step
rechecks an LLM's draft against the profile; here :func:`reflect` checks every rendered number
against the facts it was rendered from and drops any sentence that states something else).
Quoted spans are event texts copied verbatim from the logs, so their digits are not claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUTURE_QUERY = "What will the user most likely do next?"
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_QUOTED = re.compile(r'"[^"]*"')


def numbers_in(text: str) -> list[str]:
    """Every number stated in ``text`` outside double-quoted spans, as written."""
    return _NUMBER.findall(_QUOTED.sub(" ", text))


def _sentences(text: str) -> list[str]:
    # Split after ". " unless the period is inside a quote (event texts may contain periods).
    out, buf, in_quote = [], [], False
    for i, ch in enumerate(text):
        buf.append(ch)
        if ch == '"':
            in_quote = not in_quote
        elif ch == "." and not in_quote and (i + 1 == len(text) or text[i + 1] == " "):
            out.append("".join(buf).strip())
            buf = []
    if "".join(buf).strip():
        out.append("".join(buf).strip())
    return out


def reflect(answer: str, facts: set[str]) -> tuple[str, int]:
    """Drop sentences stating a number not in ``facts``; return (answer, sentences dropped)."""
    kept, dropped = [], 0
    for sentence in _sentences(answer):
        if all(n in facts for n in numbers_in(sentence)):
            kept.append(sentence)
        else:
            dropped += 1
    return " ".join(kept), dropped


def fmt_money(x: float) -> str:
    return f"{x:.2f}"


def fmt_rate(x: float) -> str:
    return f"{x:.1f}"


@dataclass(frozen=True)
class FutureAction:
    """One action of the future summary: its text, how often, and the busiest temporal bin."""

    text: str
    count: int
    peak_bin: int


def bin_bounds(future_days: int, n_bins: int, b: int) -> tuple[int, int]:
    """1-based inclusive day range of temporal bin ``b``."""
    width = future_days / n_bins
    return int(b * width) + 1, int((b + 1) * width)


def render_future(actions: list[FutureAction], future_days: int, n_bins: int) -> tuple[str, set[str]]:
    """The D_future answer and the facts (numbers) it may state."""
    facts = {str(future_days)}
    if not actions:
        return f"In the next {future_days} days: no activity.", facts
    parts = []
    for a in actions:
        lo, hi = bin_bounds(future_days, n_bins, a.peak_bin)
        facts |= {str(a.count), str(lo), str(hi)}
        times = "time" if a.count == 1 else "times"
        parts.append(f'"{a.text}" {a.count} {times}, mostly in days {lo}-{hi}')
    return f"In the next {future_days} days: " + "; ".join(parts) + ".", facts


@dataclass(frozen=True)
class TopicStats:
    """What a user's history says about one topic (all numbers come from the profile)."""

    n: int
    active_days: int
    distinct: int
    top: list[tuple[str, int]]
    total_cents: int | None  # integer cents, so sums do not depend on summation order
    n_valued: int
    last_days_ago: int
    weekend: int


def render_topic(topic_name: str, s: TopicStats, history_days: int) -> tuple[str, set[str]]:
    """A D_uqa answer for one topic, and the facts (numbers) it may state."""
    per_week = fmt_rate(s.n / (history_days / 7))
    weekend_pct = str(round(100 * s.weekend / s.n))
    facts = {
        str(history_days),
        str(s.n),
        per_week,
        str(s.active_days),
        str(s.distinct),
        str(s.last_days_ago),
        weekend_pct,
    }
    events = "event" if s.n == 1 else "events"
    actions = "action" if s.distinct == 1 else "actions"
    out = [
        f"Over the last {history_days} days the user had {s.n} {events} related to {topic_name}, "
        f"about {per_week} per week on {s.active_days} different days, across {s.distinct} distinct {actions}."
    ]
    top = ", ".join(f'"{text}" ({c} {"time" if c == 1 else "times"})' for text, c in s.top)
    facts |= {str(c) for _, c in s.top}
    out.append(f"Most frequent: {top}.")
    if s.total_cents is not None and s.n_valued > 0:
        total, avg = fmt_money(s.total_cents / 100), fmt_money(s.total_cents / s.n_valued / 100)
        facts |= {total, avg}
        out.append(f"Amounts: {total} CNY in total, {avg} CNY on average.")
    days = "day" if s.last_days_ago == 1 else "days"
    out.append(
        f"The most recent was {s.last_days_ago} {days} before the cutoff; {weekend_pct}% fell on weekends."
    )
    return " ".join(out), facts
