"""The experiment's rows: pretraining variants (recipe overrides), baseline rows, the compared pairs."""

from __future__ import annotations

from typing import Any

# name -> (table row, dotted overrides of the pretraining recipe)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("Q-Anchor (base)", {}),
    "no-contrastive": ("w/o contrastive", {"model.contrastive.enabled": False}),
    "no-ntp": ("w/o NTP", {"model.ntp_weight": 0}),
    "no-margin": ("w/o margin filter", {"model.contrastive.margin": None}),
    "no-structural": (
        "w/o structural tokens",
        {"model.arch.user_marker": False, "model.arch.modality_markers": False},
    ),
    # Model switches (issue 13): each a recipe override with its own row, kept only if it helps
    # on the validation split (`qanchor diagnose`).
    "residual": (
        "+ residual path (pooled modality tokens into the head)",
        {"model.arch.head_residual": True},
    ),
    "wide-head": ("+ wider head (inner 1024)", {"model.arch.head_hidden": 1024}),
    "learnable-tau": ("+ learnable temperature", {"model.contrastive.learnable_temperature": True}),
    "event-time": ("+ event ages in the event tokens", {"model.arch.event_time": True}),
    "event-counts": ("+ event counts in the modality tokens", {"model.arch.event_counts": True}),
    "time-counts": (
        "+ event ages and event counts",
        {"model.arch.event_time": True, "model.arch.event_counts": True},
    ),
    # Issue 25: the embedding must carry future behaviour (pretraining data built with future events).
    "future": ("+ future anchor (occurs within 7/14/30 days, every query)", {"model.future.weight": 1.0}),
    "future-dq": (
        "+ future anchor (occurs within 7/14/30 days, D_future query only)",
        {"model.future.weight": 1.0, "model.future.queries": "future"},
    ),
    "future-dense": (
        "+ dense all-action future anchor",
        {"model.future.weight": 1.0, "model.future.form": "dense", "data.future_negatives": 64},
    ),
    "pna": ("+ count-aware pooling (PNA scalers)", {"model.arch.pooling": "pna"}),
    "count-token": ("+ count token", {"model.arch.count_token": True}),
    "reconstruction": ("+ count reconstruction", {"model.reconstruction_weight": 1.0}),
    "counts-future": (
        "+ PNA pooling, count token, future anchor, reconstruction",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 1.0,
            "model.reconstruction_weight": 1.0,
        },
    ),  # fmt: skip
    "counts-future-residual": (
        "+ PNA pooling, count token, future anchor, reconstruction, residual path",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 1.0,
            "model.reconstruction_weight": 1.0,
            "model.arch.head_residual": True,
        },
    ),  # fmt: skip
    "counts-future-light": (
        "+ PNA pooling, count token, future anchor, reconstruction; InfoNCE and NTP at 0.1",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 1.0,
            "model.reconstruction_weight": 1.0,
            "model.contrastive.weight": 0.1,
            "model.ntp_weight": 0.1,
        },
    ),  # fmt: skip
    "counts-future-x5": (
        "+ PNA pooling, count token, future anchor and reconstruction at weight 5",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 5.0,
            "model.reconstruction_weight": 5.0,
        },
    ),  # fmt: skip
    # The contrastive loss on the L2-normalised <USER_EMB> hidden state itself (no head): the NTP-only
    # model's hidden state beat the contrastive head's output on validation.
    "no-head": (
        "u = <USER_EMB> hidden state, contrastive on it (no head)",
        {"model.arch.embedding": "hidden"},
    ),
}


# evaluate's baseline name -> table row
BASELINE_ROWS = {
    "minilm": "General text embedding (MiniLM, profile text)",
    "mean-events": "Mean event vectors + tabular",
    "category-counts": "Event counts per modality and category + tabular",
    "event-counts": "Reference: bag of events (log counts) + tabular",
    "time-windows": "Reference: last 7/30/90 days (mean vectors + log counts) + tabular",
}


BASE, TUNED, UNPRETRAINED = "Q-Anchor (base)", "Q-Anchor (prompt-tuned)", "w/o pretraining (prompt-tuned)"


def comparisons(variants: list[str], tuned: str = TUNED) -> list[tuple[str, str]]:
    """(A, B) pairs: the report gives a paired-bootstrap interval of Avg AUC(A) - AUC(B)."""
    return [(BASE, "minilm"), (BASE, "mean-events"),
            *((tuned, b) for b in ("mean-events", "event-counts", "category-counts", "time-windows")),
            (tuned, BASE), (tuned, UNPRETRAINED),
            *((VARIANTS[v][0], BASE) for v in variants if v != "base"),
            *((VARIANTS[v][0], b) for v in variants if v != "base" for b in ("mean-events", "category-counts"))]  # fmt: skip


def row_name(key: str) -> str:
    """A report key as its table row: baseline keys named, also inside "[key ; row]"."""
    if key.startswith("["):
        base, _, rest = key[1:].partition(" ; ")
        return f"[{BASELINE_ROWS.get(base, base)} ; {rest}"
    return BASELINE_ROWS.get(key, key)
