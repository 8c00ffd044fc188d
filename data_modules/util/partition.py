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

import re
from dataclasses import dataclass

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
