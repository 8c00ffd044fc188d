"""The baselines' feature cache: keyed by the histories (not the split), read back exactly."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from scipy import sparse

from data_modules.builder.runner import BuildConfig, build
from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import encode_dataset, load_vectors
from qanchor_pl.eval.feature_cache import cached_features, features_key
from qanchor_pl.eval.features import event_count_features, mean_event_features


def _build(raw, out, *, split_seed=0, cutoff=None, reuse=None):
    build(BuildConfig(raw=str(raw), out=str(out), users_per_shard=100, row_group_size=32, tokenizer_vocab=1024,
                      min_class_users=0, split_seed=split_seed, cutoff=cutoff))  # fmt: skip
    encode_dataset(out, "hash", dim=32, reuse=reuse)
    return out


def test_the_key_follows_the_histories_not_the_split(built, raw_world, tmp_path):
    other_split = _build(raw_world, tmp_path / "split1", split_seed=1, cutoff=Manifest.load(built).cutoff)
    test_users = [pl.read_parquet(d / "benchmarks" / "Takeout.parquet").filter(pl.col("split") == "test")
                  for d in (built, other_split)]  # fmt: skip
    assert set(test_users[0]["user_id"]) != set(test_users[1]["user_id"])  # another split ...
    assert features_key(built, "time-windows") == features_key(
        other_split, "time-windows"
    )  # ... the same key
    assert features_key(built, "time-windows") != features_key(built, "mean-events")
    earlier = (dt.datetime.fromisoformat(Manifest.load(built).cutoff) - dt.timedelta(days=20)).isoformat()
    # other histories (an earlier cutoff); its texts' vectors copied from two earlier data sets
    other_time = _build(raw_world, tmp_path / "earlier", cutoff=earlier, reuse=[built, other_split])
    assert features_key(other_time, "time-windows") != features_key(built, "time-windows")
    for m in Manifest.load(other_time).event_modalities:
        assert load_vectors(other_time, m).shape[0] == Manifest.load(other_time).counts["vocab"][m]


def test_cached_features_read_back_exactly_and_are_not_recomputed(built, tmp_path):
    calls = []

    def counted(fn):
        def run():
            calls.append(fn.__name__)
            return fn(built)

        return run

    for fn in (mean_event_features, event_count_features):  # dense, and sparse counts as CSR
        first = cached_features(tmp_path, built, fn.__name__, counted(fn))
        again = cached_features(tmp_path, built, fn.__name__, counted(fn))
        assert calls.count(fn.__name__) == 1 and first.keys() == again.keys()
        for key, (ids, mat) in first.items():
            ids2, mat2 = again[key]
            assert list(ids) == ids2 and sparse.issparse(mat) == sparse.issparse(mat2)
            dense = lambda a: a.toarray() if sparse.issparse(a) else a  # noqa: E731
            np.testing.assert_array_equal(dense(mat), dense(mat2))
    sparse_forced = {"*": (["a", "b"], sparse.csr_matrix(np.array([[0, 1.5], [2.0, 0]], np.float32)))}
    got = cached_features(tmp_path, built, "forced", lambda: sparse_forced)
    got = cached_features(tmp_path, built, "forced", lambda: None)  # read, not computed
    assert sparse.issparse(got["*"][1]) and got["*"][1].toarray().tolist() == [[0, 1.5], [2.0, 0]]
