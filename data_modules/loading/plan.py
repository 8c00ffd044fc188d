"""The epoch plan: which samples each (rank, worker) reads, in which order, batch by batch.

Pure index arithmetic, a function of (seed, epoch, world size, rank, workers, batch size) and the
unit sizes only, so that it can be recomputed anywhere and a resume needs nothing but a counter.

1. Units (parquet row groups) are ordered: shard order shuffled, then row groups within each
   shard shuffled (both from ``(seed, epoch)``). Their rows, concatenated, form the epoch stream
   of N samples.
2. Ranks take balanced contiguous slices of the stream (sizes ``floor(N/W)`` or ``+1``), so each
   reads about 1/W of the data. Every sample is seen exactly once per epoch across all ranks.
3. All ranks take the same number of steps, ``S = ceil(floor(N/W) / B)``. The remainder is never
   dropped or repeated: a rank's last batch holds what is left, between 1 and B+1 samples (a
   rank that got the extra ``+1`` sample folds it into its last batch instead of opening a step
   the other ranks would not take).
4. A rank's S batches are split among its data-loader workers in contiguous blocks. Each worker
   shuffles its samples with a bounded buffer (``buffer_size``) so it reads row groups nearly
   sequentially, then cuts them into its batches.

5. Optionally (``length_window`` > 0), batches are length-balanced: each run of ``length_window``
   consecutive batches of a worker is re-cut after sorting its samples by token length, and the
   re-cut batches are dealt to that run's batch slots in a random order. A batch then pads to
   members of similar length, the order of long and short batches stays random, the window keeps
   reads local (its samples were near each other in the stream), and every slot keeps its size.

Because every rank has the same S and the same split into workers, the count of batches each
worker has produced is the same on every rank: rank 0's loader state resumes all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlanSpec:
    """Everything the plan depends on besides the unit sizes."""

    seed: int
    epoch: int
    world_size: int
    rank: int
    num_workers: int
    worker: int
    batch_size: int
    shuffle: bool = True
    buffer_size: int = 1024
    length_window: int = 0  # batches per length-sorting window; 0 = off


def unit_order(shard_of_unit: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order of units: shards shuffled, then units within each shard shuffled."""
    n = len(shard_of_unit)
    if not shuffle:
        return np.arange(n)
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    shards = np.unique(shard_of_unit)
    order = []
    for s in rng.permutation(shards):
        members = np.flatnonzero(shard_of_unit == s)
        order.append(rng.permutation(members))
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


def steps_per_epoch(n_samples: int, world_size: int, batch_size: int) -> int:
    per_rank = n_samples // world_size
    if per_rank < 1:
        raise ValueError(f"{n_samples} samples cannot feed {world_size} ranks: every rank needs at least one")
    return -(-per_rank // batch_size)


def rank_slice(n_samples: int, world_size: int, rank: int) -> tuple[int, int]:
    base, extra = divmod(n_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_batch_sizes(n_rank: int, steps: int, batch_size: int) -> np.ndarray:
    sizes = np.full(steps, batch_size, dtype=np.int64)
    sizes[-1] = n_rank - (steps - 1) * batch_size
    return sizes


def worker_batches(steps: int, num_workers: int, worker: int) -> tuple[int, int]:
    """Contiguous block [a, b) of a rank's batch indices owned by one worker."""
    return (worker * steps) // num_workers, ((worker + 1) * steps) // num_workers


def buffered_shuffle(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Permutation of range(n) produced by a shuffle buffer: output i comes from at most
    ``buffer_size`` positions ahead of the read frontier, so reads stay nearly sequential."""
    if n <= 1 or buffer_size <= 1:
        return np.arange(n)
    k = min(buffer_size, n)
    buf = list(range(k))
    out = np.empty(n, dtype=np.int64)
    picks = rng.integers(0, k, size=n)
    for i, nxt in enumerate(range(k, n)):
        j = picks[i]
        out[i] = buf[j]
        buf[j] = nxt
    out[n - k :] = np.asarray(buf)[rng.permutation(k)]
    return out


@dataclass(frozen=True)
class WorkerPlan:
    """Stream positions a worker reads, already grouped into its batches."""

    positions: np.ndarray  # epoch-stream positions, in the order they are served
    batch_bounds: np.ndarray  # batch j is positions[batch_bounds[j]:batch_bounds[j+1]]
    steps: int  # steps per epoch per rank (all workers of a rank together)

    @property
    def num_batches(self) -> int:
        return len(self.batch_bounds) - 1

    def batch(self, j: int) -> np.ndarray:
        return self.positions[self.batch_bounds[j] : self.batch_bounds[j + 1]]


def length_balanced(
    positions: np.ndarray, bounds: np.ndarray, lengths: np.ndarray, window: int, rng: np.random.Generator
) -> np.ndarray:
    """``positions`` regrouped so that each window of ``window`` batches is cut from its samples
    sorted by length, the cut groups dealt to the window's slots in a random order (see step 5).

    ``bounds`` are the batch bounds into ``positions``; ``lengths`` is indexed by position."""
    out = positions.copy()
    n_batches = len(bounds) - 1
    for w0 in range(0, n_batches, window):
        w1 = min(w0 + window, n_batches)
        lo, hi = bounds[w0], bounds[w1]
        members = positions[lo:hi]
        ranked = members[np.argsort(lengths[members], kind="stable")]  # ties keep the shuffled order
        slots = w0 + rng.permutation(w1 - w0)
        start = 0
        for slot in slots:  # the k-th shortest group goes to a random slot, at that slot's size
            size = bounds[slot + 1] - bounds[slot]
            out[bounds[slot] : bounds[slot + 1]] = ranked[start : start + size]
            start += size
    return out


def make_worker_plan(n_samples: int, spec: PlanSpec, lengths: np.ndarray | None = None) -> WorkerPlan:
    """A worker's plan; ``lengths`` (per epoch-stream position) only with ``spec.length_window``."""
    steps = steps_per_epoch(n_samples, spec.world_size, spec.batch_size)
    r0, r1 = rank_slice(n_samples, spec.world_size, spec.rank)
    sizes = rank_batch_sizes(r1 - r0, steps, spec.batch_size)
    a, b = worker_batches(steps, spec.num_workers, spec.worker)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    lo, hi = r0 + offsets[a], r0 + offsets[b]
    positions = np.arange(lo, hi, dtype=np.int64)
    if spec.shuffle:
        rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, spec.worker, 0xB0F])
        positions = positions[buffered_shuffle(len(positions), spec.buffer_size, rng)]
    bounds = offsets[a : b + 1] - offsets[a]
    if spec.length_window > 0:
        if lengths is None or len(lengths) != n_samples:
            raise ValueError("a length-balanced plan needs one length per sample of the epoch stream")
        rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, spec.worker, 0x1E9])
        positions = length_balanced(positions, bounds, lengths, spec.length_window, rng)
    return WorkerPlan(positions=positions, batch_bounds=bounds, steps=steps)
