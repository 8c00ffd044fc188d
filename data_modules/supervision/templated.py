"""Templated QA pairs of UserU (D_future and D_uqa answers) and the reflection check.

Answers only state facts computed from the events the model sees (paper 3.1: an answer is rechecked
against the profile). Each rendered answer carries its :class:`Facts`: the numbers it may state and
the event texts it may quote verbatim. :func:`reflect` masks the allowed quotes first (event texts
may themselves hold quotes, digits and periods: ``Rated "Heat" 4 stars``), then drops every
sentence that states a number outside the facts or quotes anything else, and counts why.

No unit or domain is assumed: a value is a plain number unless ``modalities.json`` says what it is.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from data_modules.contract.modalities import ModalityMeta

FUTURE_QUERY = "What will the user most likely do next?"
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
QUOTED_SPAN = re.compile(r'"[^"\x00]*"')
_MASK = re.compile(r"\x00(\d+)\x00")
_SENTENCE_GAP = re.compile(r"(?<=[.!?])\s+")


@functools.lru_cache(maxsize=1 << 16)
def number_key(text: str) -> str:
    """Numbers compare by value to two decimals: "10", "10.0" and "10.00" state the same fact."""
    return f"{float(text):.2f}"


@dataclass
class Facts:
    """What an answer may state: numbers (by value) and event texts it may quote."""

    spans: set[str] = field(default_factory=set)
    # set by a template whose free words (names, labels, units) reflection cannot react to: then
    # an answer whose quotes are whole spans is already what reflect returns (see reflect)
    plain: bool = False
    _values: list[object] = field(default_factory=list, repr=False)
    _numbers: set[str] | None = field(default=None, repr=False)

    def add_numbers(self, values: Iterable[object]) -> None:
        self._values.extend(values)
        self._numbers = None

    @property
    def numbers(self) -> set[str]:
        """The stated numbers' keys, computed when first read (most templated answers never are)."""
        if self._numbers is None:
            self._numbers = {number_key(str(v)) for v in self._values}
        return self._numbers


def mask_quotes(text: str, spans: Iterable[str], *, partial: bool = False) -> tuple[str, list[str]]:
    """Replace each quoted allowed span ``"span"`` by a placeholder; return (masked text, spans).

    ``partial``: a quote is allowed when it occurs inside one of ``spans`` (an LLM may quote part of
    an event text); otherwise it must equal one (templated answers quote whole texts)."""
    kept: list[str] = []

    def sub(match: re.Match) -> str:
        kept.append(match.group(0))
        return f"\x00{len(kept) - 1}\x00"

    for span in sorted(set(spans), key=len, reverse=True):  # longest first: nested quotes stay whole
        quoted = f'"{span}"'
        if span and quoted in text:  # plain text search: no pattern compiled per span
            kept.append(quoted)
            text = text.replace(quoted, f"\x00{len(kept) - 1}\x00")
    if partial:
        lowered = [s.lower() for s in spans]

        def sub_partial(match: re.Match) -> str:
            inner = match.group(0)[1:-1].strip().lower()
            return sub(match) if inner and any(inner in s for s in lowered) else match.group(0)

        text = QUOTED_SPAN.sub(sub_partial, text)
    return text, kept


def unmask(text: str, kept: list[str]) -> str:
    return _MASK.sub(lambda m: kept[int(m.group(1))], text)


def stated_numbers(text: str) -> list[str]:
    """Numbers a (masked) text states outside quotes and placeholders, as written."""
    return _NUMBER.findall(QUOTED_SPAN.sub(" ", _MASK.sub(" ", text)))


def _sentences(text: str) -> list[str]:
    """Split a masked text after '.', '!' or '?' followed by a space or the end (quotes are masked)."""
    return [s.strip() for s in _SENTENCE_GAP.split(text) if s.strip()]


def sentence_problem(masked: str, facts: Facts) -> str | None:
    """Why a masked sentence is not grounded, or None."""
    if QUOTED_SPAN.search(masked):
        return "ungrounded_quote"
    if any(number_key(n) not in facts.numbers for n in stated_numbers(masked)):
        return "unsupported_number"
    return None


# what, written outside quotes, reflection would react to: a quote, NUL, a digit, a sentence end,
# whitespace other than single spaces between words
_REACTIVE_FREE_TEXT = re.compile(r'["\x00\d.!?]|[^\S ]|  |^ | $')


@functools.lru_cache(maxsize=1 << 12)
def plain_free_text(text: str) -> bool:
    """Whether a template's free words (a topic name, a label, a unit) are inert under reflection."""
    return not _REACTIVE_FREE_TEXT.search(text)


@functools.lru_cache(maxsize=1 << 16)
def _whole_span(span: str) -> bool:
    return bool(span) and '"' not in span and "\x00" not in span


def quotes_are_whole_spans(answer: str, spans: set[str]) -> bool:
    """Whether every quote of a templated answer is one whole allowed span, so that masking finds
    exactly the inserted ones: spans are non-empty and hold no quote or NUL, and no stretch between
    two quotes (``", "``, `` (3 times), ``) is itself a span masking could take first."""
    if not all(map(_whole_span, spans)):
        return False
    parts = answer.split('"')
    return not any(between in spans for between in parts[2:-2:2])


def reflect(answer: str, facts: Facts) -> tuple[str, Counter]:
    """Keep the grounded sentences of ``answer``; return (kept answer, dropped sentences by reason).

    A templated answer whose facts are ``plain`` and whose quotes are whole spans is returned as it
    is: each of its numbers is in its facts by construction, its quotes mask whole, and its free
    words hold nothing reflection reacts to, so the check below would keep it unchanged (tested
    against the check on every answer of the synthetic worlds)."""
    if facts.plain and quotes_are_whole_spans(answer, facts.spans):
        return answer, Counter()
    masked, kept_spans = mask_quotes(answer, facts.spans)
    if not QUOTED_SPAN.search(masked) and all(number_key(n) in facts.numbers for n in stated_numbers(masked)):
        # every sentence is grounded (the templates' usual case): one pass over the whole answer
        # gives the text the sentence loop would join (split at the same gaps, stripped)
        return unmask(_SENTENCE_GAP.sub(" ", masked.strip()), kept_spans), Counter()
    return reflect_by_sentence(masked, kept_spans, facts)


def reflect_by_sentence(masked: str, kept_spans: list[str], facts: Facts) -> tuple[str, Counter]:
    """:func:`reflect` one sentence at a time (``masked``, ``kept_spans``: from :func:`mask_quotes`)."""
    kept, dropped = [], Counter()
    for sentence in _sentences(masked):
        problem = sentence_problem(sentence, facts)
        if problem:
            dropped[problem] += 1
        else:
            kept.append(unmask(sentence, kept_spans))
    return " ".join(kept), dropped


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- D_future ------------------------------------------------------------------------------------
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


def render_future(actions: list[FutureAction], future_days: int, n_bins: int) -> tuple[str, Facts]:
    """The D_future answer and the facts it may state."""
    facts = Facts(plain=True)  # no free words: only numbers and quoted texts
    facts.add_numbers([future_days])
    if not actions:
        return f"In the next {future_days} days: no activity.", facts
    parts = []
    for a in actions:
        lo, hi = bin_bounds(future_days, n_bins, a.peak_bin)
        facts.add_numbers([a.count, lo, hi])
        facts.spans.add(a.text)
        parts.append(f'"{a.text}" {_plural(a.count, "time")}, mostly in days {lo}-{hi}')
    return f"In the next {future_days} days: " + "; ".join(parts) + ".", facts


# -- D_uqa ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicStats:
    """What a user's seen history says about one topic (every number comes from those events)."""

    n: int
    active_days: int
    distinct: int
    top: list[tuple[str, int]]
    values: dict[str, tuple[int, int]]  # modality -> (total in hundredths, events with a value)
    last_days_ago: int
    last_text: str
    weekend: int
    last_week: int  # events in the 7 days before the cutoff
    span_days: int  # days from the first matching event on record to the cutoff
    later_half: int  # events in the later half of that span


def _value_sentence(meta: ModalityMeta, total_h: int, n_valued: int, named: bool) -> tuple[str, list[str]]:
    total, avg = f"{total_h / 100:.2f}", f"{total_h / n_valued / 100:.2f}"
    which = f" ({meta.label})" if named else ""
    if meta.value_kind == "rating":
        return f"Average rating{which}: {meta.with_unit(avg)}.", [avg]
    noun = {"amount": "Amounts", "duration": "Durations", "count": "Quantities"}.get(
        meta.value_kind, "Values"
    )
    return f"{noun}{which}: {meta.with_unit(total)} in total, {meta.with_unit(avg)} on average.", [total, avg]


def render_topic(
    name: str, kind: str, subject: str, s: TopicStats, meta: Mapping[str, ModalityMeta]
) -> tuple[str, Facts]:
    """A D_uqa answer for one topic (``kind``: events, recency or trend), and its facts.

    ``subject``: how the answer names what the topic covers (a modality's label for recency/trend)."""
    free = [name, subject] + [w for m in s.values for w in (meta[m].label, meta[m].unit)]
    facts = Facts(plain=all(plain_free_text(w) for w in free))
    days = "day" if s.last_days_ago == 1 else "days"
    if kind == "recency":
        facts.add_numbers([s.last_days_ago, s.last_week, s.n, 7])
        facts.spans.add(s.last_text)
        text = (
            f'The user\'s most recent {subject} event was {s.last_days_ago} {days} before the cutoff: "{s.last_text}". '
            f"{s.last_week} of the {_plural(s.n, 'event')} on record fell in the last 7 days."
        )
        return text, facts
    if kind == "trend":
        earlier = s.n - s.later_half
        direction = (
            "rising"
            if s.later_half > 1.25 * earlier
            else "falling"
            if earlier > 1.25 * s.later_half
            else "steady"
        )
        facts.add_numbers([s.span_days, earlier, s.later_half])
        text = (
            f"Across the last {s.span_days} days on record, the user had {_plural(earlier, 'event')} "
            f"in {subject} in the earlier half and {s.later_half} in the later half: activity is {direction}."
        )
        return text, facts
    weekend_pct = round(100 * s.weekend / s.n)
    facts.add_numbers([s.n, s.active_days, s.distinct, s.last_days_ago, weekend_pct, *(c for _, c in s.top)])
    facts.spans |= {t for t, _ in s.top}
    out = [
        f"The user's recent history shows {_plural(s.n, 'event')} related to {name}, on "
        f"{s.active_days} different {'day' if s.active_days == 1 else 'days'}, across "
        f"{s.distinct} distinct {'action' if s.distinct == 1 else 'actions'}.",
        "Most frequent: " + ", ".join(f'"{t}" ({_plural(c, "time")})' for t, c in s.top) + ".",
    ]
    named = len(s.values) > 1
    for m in sorted(s.values):
        total_h, n_valued = s.values[m]
        if n_valued:
            sentence, numbers = _value_sentence(meta[m], total_h, n_valued, named)
            facts.add_numbers(numbers)
            out.append(sentence)
    out.append(
        f"The most recent was {s.last_days_ago} {days} before the cutoff; {weekend_pct}% fell on weekends."
    )
    return " ".join(out), facts
