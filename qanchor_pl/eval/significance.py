"""How sure is a table cell? Bootstrap over the probe's test users.

A row's average AUC is resampled by drawing the test users with replacement (the same draws for
every row and, when scenarios share their test users, for every scenario), so two rows can be
compared *paired*: the spread of their difference is much narrower than either row's own spread,
and it is the difference that decides "does A beat B".
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # scenario -> (test scores, test labels)


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` [R, N] against ``labels`` [R, N] (Mann-Whitney, ties halved);
    NaN where a row has a single class."""
    ranks = rankdata(scores, axis=1)
    pos = labels.astype(bool)
    n_pos = pos.sum(1)
    n_neg = labels.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_avg_auc(curves: Curves, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot] average-over-scenarios AUCs, each from one resample of every scenario's test users.
    The draws depend only on (seed, number of test users), which is what makes rows comparable."""
    per_scenario = []
    for scores, labels in curves.values():
        idx = np.random.default_rng(seed).integers(0, len(labels), size=(n_boot, len(labels)))
        per_scenario.append(rank_auc(scores[idx], labels[idx]))
    return np.nanmean(np.stack(per_scenario), axis=0)


def paired_delta(
    a: Curves,
    b: Curves,
    n_boot: int = 1000,
    seed: int = 0,
    boot_a: np.ndarray | None = None,
    boot_b: np.ndarray | None = None,
) -> dict[str, float]:
    """Average AUC of ``a`` minus that of ``b``: the point value and a 95% paired-bootstrap interval.
    ``boot_a``/``boot_b``: the rows' :func:`bootstrap_avg_auc` draws, if already computed."""
    if set(a) != set(b):
        raise ValueError(f"rows cover different scenarios: {sorted(a)} vs {sorted(b)}")
    for name in a:
        if not np.array_equal(a[name][1], b[name][1]):
            raise ValueError(f"scenario '{name}': the rows were scored on different test users")
    point = float(np.mean([_auc(*a[s]) - _auc(*b[s]) for s in a]))
    boot_a = bootstrap_avg_auc(a, n_boot, seed) if boot_a is None else boot_a
    boot_b = bootstrap_avg_auc(b, n_boot, seed) if boot_b is None else boot_b
    lo, hi = np.percentile(boot_a - boot_b, [2.5, 97.5])
    return {"delta": point, "lo": float(lo), "hi": float(hi)}


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(rank_auc(scores[None], labels[None])[0])
