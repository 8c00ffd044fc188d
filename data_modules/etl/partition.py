"""Partitions of a build: which users a task owns, and statistics that merge exactly.

A partition is a range of the users' stable 64-bit hash (the same hash that orders users into
shards), so partition 0's users come first in the one-process build's order, then partition 1's,
and so on: concatenating the partitions' shards gives exactly the one-process build's user order.

Statistics that every partition must agree on are merged from per-partition parts. Counts merge by
addition; the tabular mean and standard deviation merge through *exact* sums (integers scaled by
powers of two), so the result does not depend on how users were split into partitions, nor on
summation order: a 1-partition and an 8-partition build give the same bits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import polars as pl

from data_modules.util.errors import DataError
from data_modules.util.hashing import stable_hash64

_SPEC = re.compile(r"(\d+)/(\d+)")
MAX_PARTITIONS = 100_000


@dataclass(frozen=True)
class PartitionSpec:
    """Task ``index`` of ``count`` (``--partition I/N``, 0-based)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, what: str = "--partition") -> PartitionSpec:
        match = _SPEC.fullmatch(text.strip())
        if not match:
            raise DataError(what, f"'{text}' is not a partition spec", expected="I/N, e.g. 3/8 (0 <= I < N)")
        index, count = int(match[1]), int(match[2])
        if not 1 <= count <= MAX_PARTITIONS:
            raise DataError(what, f"'{text}': {count} partitions", expected=f"1 to {MAX_PARTITIONS}")
        if index >= count:
            raise DataError(
                what, f"'{text}': partition {index} is out of range", expected=f"0 to {count - 1}"
            )
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"


def partition_of(user_id: str, count: int) -> int:
    """The partition owning ``user_id``: its place in the hash range, cut into ``count`` equal parts."""
    return (stable_hash64(user_id, "big") * count) >> 64


def partition_series(ids: pl.Series, count: int) -> pl.Series:
    """:func:`partition_of` for a column of ids (hashing each distinct id once); a null or empty id
    goes to partition 0, whose task reports it."""
    if count == 1:
        return pl.Series(ids.name, np.zeros(len(ids), dtype=np.uint32))
    distinct = ids.drop_nulls().unique()
    table = pl.DataFrame(
        {"id": distinct, "p": [partition_of(u, count) for u in distinct.to_list()]},
        schema={"id": pl.String, "p": pl.UInt32},
    )
    owner = ids.to_frame("id").join(table, on="id", how="left", maintain_order="left")["p"]
    return owner.fill_null(0).alias(ids.name)


def owner_expr(count: int, column: str = "user_id") -> pl.Expr:
    """The partition (of ``count``) owning each row's ``column``, as an expression."""
    return (
        pl.col(column)
        .cast(pl.String)
        .map_batches(lambda s: partition_series(s, count), return_dtype=pl.UInt32, is_elementwise=True)
    )


def in_partition(spec: PartitionSpec | None, column: str = "user_id") -> pl.Expr:
    """A filter keeping the rows whose ``column`` the partition owns (all rows without a spec)."""
    if spec is None or spec.count == 1:
        return pl.lit(True)
    return owner_expr(spec.count, column) == spec.index


def balance(sizes: list[int], count: int) -> list[list[int]]:
    """Indices of ``sizes`` dealt to ``count`` bins, largest first to the lightest bin (ties to the
    lower bin): each scatter task reads about the same number of bytes."""
    bins: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        b = min(range(count), key=lambda j: (loads[j], j))
        bins[b].append(i)
        loads[b] += sizes[i]
    return [sorted(b) for b in bins]


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
