"""The epoch plan: exactly-once coverage, equal steps on every rank, determinism, bounded shuffle."""

import numpy as np
import pytest

from data_modules.loading.plan import (
    PlanSpec,
    buffered_shuffle,
    length_balanced,
    make_worker_plan,
    steps_per_epoch,
)


def _lengths(n, seed=5):
    return np.random.default_rng(seed).integers(1, 500, n)


def _all_batches(n, world, workers, batch, epoch=0, seed=0, shuffle=True, window=0):
    per_rank = []
    lengths = _lengths(n) if window else None
    for rank in range(world):
        batches = []
        for w in range(workers):
            spec = PlanSpec(
                seed, epoch, world, rank, workers, w, batch, shuffle, buffer_size=7, length_window=window
            )
            plan = make_worker_plan(n, spec, lengths)
            batches.append([plan.batch(j) for j in range(plan.num_batches)])
        per_rank.append(batches)
    return per_rank


@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 97, 128, 129])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("window", [0, 3])
def test_every_sample_once_and_equal_steps(n, world, workers, window):
    batch = 8
    if n < world:
        with pytest.raises(ValueError, match="at least one"):
            _all_batches(n, world, workers, batch, window=window)
        return
    per_rank = _all_batches(n, world, workers, batch, window=window)
    seen = np.concatenate([b for rank in per_rank for w in rank for b in w])
    assert sorted(seen.tolist()) == list(range(n))
    steps = steps_per_epoch(n, world, batch)
    for rank in per_rank:
        sizes = [len(b) for w in rank for b in w]
        assert len(sizes) == steps  # every rank takes the same number of steps
        assert all(1 <= s <= batch + 1 for s in sizes)
        # the batch count of each worker is the same on every rank (rank 0's state resumes all)
        assert [len(w) for w in rank] == [len(w) for w in per_rank[0]]


@pytest.mark.parametrize("window", [0, 4])
def test_plan_is_deterministic_and_epoch_dependent(window):
    a = _all_batches(100, 2, 2, 8, epoch=0, window=window)
    b = _all_batches(100, 2, 2, 8, epoch=0, window=window)
    c = _all_batches(100, 2, 2, 8, epoch=1, window=window)
    flat = lambda p: np.concatenate([x for r in p for w in r for x in w]).tolist()  # noqa: E731
    assert flat(a) == flat(b)
    assert flat(a) != flat(c)


def test_buffered_shuffle_is_a_bounded_permutation():
    rng = np.random.default_rng(0)
    perm = buffered_shuffle(1000, 16, rng)
    assert sorted(perm.tolist()) == list(range(1000))
    # output i never comes from further ahead than the buffer reaches
    assert np.all(perm[:-16] <= np.arange(1000 - 16) + 16)
    assert not np.array_equal(perm, np.arange(1000))


def test_length_balanced_batches_pad_less_and_keep_each_window_and_slot_size():
    n, batch, window = 1000, 16, 8
    lengths = _lengths(n)
    spec = PlanSpec(0, 0, 1, 0, 1, 0, batch, True, buffer_size=64)
    plain = make_worker_plan(n, spec)
    balanced = make_worker_plan(n, PlanSpec(**{**spec.__dict__, "length_window": window}), lengths)
    assert np.array_equal(plain.batch_bounds, balanced.batch_bounds)  # every slot keeps its size

    def windows(plan):
        return [np.sort(plan.positions[plan.batch_bounds[w]: plan.batch_bounds[min(w + window, plan.num_batches)]])
                for w in range(0, plan.num_batches, window)]  # fmt: skip

    # the same samples in each window (reads stay as local as the shuffle left them)
    assert all(np.array_equal(a, b) for a, b in zip(windows(plain), windows(balanced)))
    # within a window, batches hold contiguous runs of the length ranking
    for w in range(0, balanced.num_batches, window):
        groups = [lengths[balanced.batch(j)] for j in range(w, min(w + window, balanced.num_batches))]
        ranges = sorted((g.min(), g.max()) for g in groups)
        assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(ranges, ranges[1:]))

    def padding(plan):
        slots = sum(len(plan.batch(j)) * lengths[plan.batch(j)].max() for j in range(plan.num_batches))
        return 1 - lengths.sum() / slots

    assert padding(balanced) < 0.5 * padding(plain)
    # the order of long and short batches is random, not sorted
    maxima = [lengths[balanced.batch(j)].max() for j in range(window)]
    assert maxima != sorted(maxima)


def test_length_balanced_needs_lengths_and_handles_a_larger_last_batch():
    spec = PlanSpec(0, 0, 1, 0, 1, 0, 8, True, buffer_size=7, length_window=2)
    with pytest.raises(ValueError, match="one length per sample"):
        make_worker_plan(20, spec)
    positions, bounds = np.arange(17), np.array([0, 8, 17])  # a last batch of B + 1
    out = length_balanced(positions, bounds, np.arange(17)[::-1].copy(), 2, np.random.default_rng(0))
    assert sorted(out.tolist()) == list(range(17))
    assert {len(out[0:8]), len(out[8:17])} == {8, 9}
