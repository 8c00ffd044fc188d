"""Bootstrap intervals of the report: AUC by ranks, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from qanchor_pl.eval.evaluate import auc_ks
from qanchor_pl.eval.significance import bootstrap_avg_auc, paired_delta, rank_auc


def _curves(rng, signal: float, n: int = 600, scenarios: int = 3, noise=None):
    out = {}
    for k in range(scenarios):
        y = (rng.random(n) < 0.2 + 0.1 * k).astype(np.int64)
        base = rng.normal(size=n) if noise is None else noise[k]
        out[f"s{k}"] = (np.round(base + signal * y, 1), y)  # rounding makes ties
    return out


def test_rank_auc_matches_the_roc_auc_with_ties():
    rng = np.random.default_rng(0)
    for _, (scores, labels) in _curves(rng, 0.7).items():
        assert abs(rank_auc(scores[None], labels[None])[0] - auc_ks(scores, labels)["auc"]) < 1e-6


def test_a_row_against_itself_differs_by_exactly_zero():
    rows = _curves(np.random.default_rng(1), 0.5)
    assert paired_delta(rows, rows) == {"delta": 0.0, "lo": 0.0, "hi": 0.0}


def test_pairing_narrows_the_interval_of_a_small_real_difference():
    rng = np.random.default_rng(2)
    labels_rng = np.random.default_rng(3)
    noise = [rng.normal(size=600) for _ in range(3)]
    a = _curves(labels_rng, 0.8, noise=noise)
    b = {s: (np.round(sc - 0.1 * y + 0.2 * rng.normal(size=len(y)), 1), y) for s, (sc, y) in a.items()}
    d = paired_delta(a, b, n_boot=400)
    assert 0 < d["lo"] <= d["delta"] <= d["hi"]  # a truly beats b, and the interval says so
    unpaired = bootstrap_avg_auc(a, 400, seed=0) - bootstrap_avg_auc(b, 400, seed=1)
    assert d["hi"] - d["lo"] < 0.5 * np.subtract(*np.percentile(unpaired, [97.5, 2.5]))


def test_rows_scored_on_different_users_are_not_compared():
    rng = np.random.default_rng(4)
    a, b = _curves(rng, 0.5), _curves(rng, 0.5)
    with pytest.raises(ValueError, match="different test users"):
        paired_delta(a, b)
