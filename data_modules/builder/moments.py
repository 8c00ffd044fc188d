"""Exact tabular moments per partition, merged into the same mean/std whatever the split."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


# -- exact moments --------------------------------------------------------------------------------
def _exact_sum(values: np.ndarray) -> dict[str, str]:
    """The exact sum of finite float64 ``values`` as {exponent: integer}: sum = sum(int * 2**exp)."""
    mantissa, exponent = np.frexp(values)
    ints = (mantissa * 2.0**53).astype(np.int64)  # exact: a float64 mantissa has 53 bits
    exps = exponent.astype(np.int64) - 53
    out: dict[str, str] = {}
    for e in np.unique(exps):
        total = int(ints[exps == e].astype(object).sum())  # Python ints: no overflow
        if total:
            out[str(int(e))] = str(total)
    return out


def _add_sums(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    out = {k: int(v) for k, v in a.items()}
    for k, v in b.items():
        out[k] = out.get(k, 0) + int(v)
    return {k: str(v) for k, v in out.items()}


def _to_fraction(sums: dict[str, str]) -> Fraction:
    return sum((Fraction(int(v)) * Fraction(2) ** int(k) for k, v in sums.items()), Fraction(0))


def exact_moments(x: np.ndarray) -> dict:
    """Per column of ``x`` (users x features, finite): n, the exact sum and the exact sum of squares.

    A square of a float64 is not a float64, so squares are taken on the integer mantissas."""
    x = np.asarray(x, dtype=np.float64)
    columns = []
    for j in range(x.shape[1]):
        col = x[:, j]
        mantissa, exponent = np.frexp(col)
        ints = (mantissa * 2.0**53).astype(np.int64).astype(object)
        exps = 2 * (exponent.astype(np.int64) - 53)
        squares: dict[str, str] = {}
        for e in np.unique(exps):
            total = int((ints[exps == e] ** 2).sum())
            if total:
                squares[str(int(e))] = str(total)
        columns.append({"sum": _exact_sum(col), "squares": squares})
    return {"n": int(x.shape[0]), "columns": columns}


def merge_moments(parts: list[dict]) -> dict:
    """Moments of the union of the parts' users."""
    width = max((len(p["columns"]) for p in parts), default=0)
    out = {"n": 0, "columns": [{"sum": {}, "squares": {}} for _ in range(width)]}
    for p in parts:
        out["n"] += p["n"]
        for j, col in enumerate(p["columns"]):
            out["columns"][j]["sum"] = _add_sums(out["columns"][j]["sum"], col["sum"])
            out["columns"][j]["squares"] = _add_sums(out["columns"][j]["squares"], col["squares"])
    return out


def mean_std(moments: dict, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation from exact moments, each rounded once; a constant
    feature gets std 1 (it standardises to 0, not NaN)."""
    n = moments["n"]
    if width == 0 or n == 0:
        return np.zeros(width), np.ones(width)
    mean, std = np.zeros(width), np.ones(width)
    for j, col in enumerate(moments["columns"]):
        m = _to_fraction(col["sum"]) / n
        var = _to_fraction(col["squares"]) / n - m * m
        mean[j] = float(m)
        std[j] = math.sqrt(float(var)) if var > 0 else 1.0
    return mean, std
