"""What a data set keeps so that the next day's build can refresh it (``qanchor build --previous``).

A refreshable data set (``--refreshable true``) holds ``refresh/``: the cleaned events of its windows and everything later
(``events/part-I-of-N.parquet``, by hash partition of ``user_id``; exact duplicates still in), and ``state.json`` with the
counts a full build takes from raw files the refresh no longer reads: raw events per day (the
default cutoff), events with a value per modality (modality metadata), the modalities seen, and
the event-level skips (empty files, cut texts, events before the window).

A refresh reads only the new raw files and these kept events, rolls the windows forward (a cutoff
no earlier than the previous one, so nothing it needs was dropped) and rebuilds every user: each row
is relative to the cutoff (D_uqa answers in days before it, labels from the future window after it)
and to population-wide statistics (vocabulary ids by frequency, the tabular mean/std, the topic
pool), so no row of a rolled data set can be copied. The result equals a full build on the union
of the old and new raw files (tested).
"""

from __future__ import annotations

import polars as pl


def day_counts_json(days: pl.DataFrame) -> list[list]:
    return [[d.isoformat(), int(n)] for d, n in days.iter_rows()]
