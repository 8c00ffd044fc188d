"""The epoch plan: exactly-once coverage, equal steps on every rank, determinism, bounded shuffle."""

import numpy as np
import pytest

from data_modules.loading.plan import PlanSpec, buffered_shuffle, make_worker_plan, steps_per_epoch


def _all_batches(n, world, workers, batch, epoch=0, seed=0, shuffle=True):
    per_rank = []
    for rank in range(world):
        batches = []
        for w in range(workers):
            spec = PlanSpec(seed, epoch, world, rank, workers, w, batch, shuffle, buffer_size=7)
            plan = make_worker_plan(n, spec)
            batches.append([plan.batch(j) for j in range(plan.num_batches)])
        per_rank.append(batches)
    return per_rank


@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 97, 128, 129])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_sample_once_and_equal_steps(n, world, workers):
    batch = 8
    if n < world:
        with pytest.raises(ValueError, match="at least one"):
            _all_batches(n, world, workers, batch)
        return
    per_rank = _all_batches(n, world, workers, batch)
    seen = np.concatenate([b for rank in per_rank for w in rank for b in w])
    assert sorted(seen.tolist()) == list(range(n))
    steps = steps_per_epoch(n, world, batch)
    for rank in per_rank:
        sizes = [len(b) for w in rank for b in w]
        assert len(sizes) == steps  # every rank takes the same number of steps
        assert all(1 <= s <= batch + 1 for s in sizes)
        # the batch count of each worker is the same on every rank (rank 0's state resumes all)
        assert [len(w) for w in rank] == [len(w) for w in per_rank[0]]


def test_plan_is_deterministic_and_epoch_dependent():
    a = _all_batches(100, 2, 2, 8, epoch=0)
    b = _all_batches(100, 2, 2, 8, epoch=0)
    c = _all_batches(100, 2, 2, 8, epoch=1)
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
