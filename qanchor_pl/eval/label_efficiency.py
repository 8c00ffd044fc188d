"""Label efficiency: every row's probe fitted on a few labelled train users.

For each fraction f of the train users (e.g. 2 / 5 / 10 / 25 %) and each of ``draws`` draws, the
probe is fitted on the drawn users and scored on the same scored users as the full table; a row's
figure is the mean over draws of its Avg AUC. The draws are the same for every row: they depend only
on (fraction, draw, scenario, user id). They are stratified by label (f of each class, at least
:data:`MIN_PER_CLASS` users of each) so that a rare scenario's subset can be fitted at all.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from data_modules.util.hashing import stable_fraction

#: Fewest users of each label in a drawn train subset.
MIN_PER_CLASS = 2
DEFAULT_FRACTIONS = (0.02, 0.05, 0.10, 0.25)


def draw_train(bench: pl.DataFrame, fraction: float, draw: int, scenario: str) -> pl.DataFrame:
    """``bench`` (with its ``split`` column as the probe reads it) with the train part cut to the
    drawn users: per label, the ``fraction`` (at least MIN_PER_CLASS) with the smallest stable
    hash of (fraction, draw, scenario, user)."""
    train = bench.filter(pl.col("split") == "train")
    keys = [
        stable_fraction(f"label-draw:{fraction}:{draw}:{scenario}:{u}") for u in train["user_id"].to_list()
    ]
    train = train.with_columns(pl.Series("_key", keys))
    kept = []
    for label in sorted(train["label"].unique().to_list()):
        part = train.filter(pl.col("label") == label).sort("_key")
        take = min(part.height, max(MIN_PER_CLASS, int(round(fraction * part.height))))
        kept.append(part.head(take))
    chosen = pl.concat(kept).drop("_key")
    return pl.concat([chosen, bench.filter(pl.col("split") != "train")])


def average_over_draws(per_draw: list[dict[str, dict]]) -> dict[str, float | None]:
    """Mean (and spread) over draws of each draw's Avg AUC (scenarios with a defined AUC)."""
    avgs = []
    for metrics in per_draw:
        aucs = [m["auc"] for m in metrics.values() if m.get("auc") is not None]
        avgs.append(float(np.mean(aucs)) if aucs else None)
    ok = [a for a in avgs if a is not None]
    return {"auc": float(np.mean(ok)) if ok else None, "sd": float(np.std(ok)) if ok else None, "draws": avgs}


def markdown(table: dict[str, dict[str, dict]], fractions: list[float]) -> str:
    """Rows x fractions (then 100 %), mean Avg AUC over draws."""
    head = " | ".join(f"{f:.0%}" for f in fractions)
    lines = ["**Label efficiency** (Avg AUC with only part of the train users labelled; mean over draws, "
             "the same draws for every row)", "", f"| Method | {head} | 100 % |",
             "|---|" + "---|" * (len(fractions) + 1)]  # fmt: skip
    for name, cells in table.items():
        vals = [cells.get(str(f), {}).get("auc") for f in fractions] + [cells.get("1.0", {}).get("auc")]
        lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"
