"""``qanchor encode``: deterministic hash vectors, real MiniLM offline, resume without re-encoding."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_modules.builder.runner import BuildConfig, build
from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import _encode_rows, _vocab_texts, encode_dataset, load_vectors
from data_modules.encode.encoders import HashEncoder
from data_modules.util.partition import PartitionSpec


def test_hash_encoder_is_deterministic_normalised_and_similarity_aware():
    enc = HashEncoder(64)
    a = enc(["Paid 20-50 CNY at Meituan Takeout", "Paid 20-50 CNY at Ele.me", "Used app WeChat"])
    np.testing.assert_array_equal(
        a, enc(["Paid 20-50 CNY at Meituan Takeout", "Paid 20-50 CNY at Ele.me", "Used app WeChat"])
    )
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    assert a[0] @ a[1] > a[0] @ a[2]


def test_vectors_match_vocabulary_and_are_float16(built):
    m = Manifest.load(built)
    for mod in m.event_modalities:
        v = load_vectors(built, mod)
        assert isinstance(v, np.memmap) and v.dtype == np.float16
        assert v.shape == (m.counts["vocab"][mod], 32)
        texts = pq.read_table(built / "vocab" / f"{mod}.parquet").column("text").to_pylist()
        np.testing.assert_array_equal(v[:5], HashEncoder(32)(texts[:5]).astype(np.float16))
        assert m.files[f"vectors/{mod}.npy"]["encoder"] == "hash-32"


class _Interrupted(RuntimeError):
    pass


class _DiesAfter:
    """The real hash encoder, interrupted (like a killed job) after ``n`` batches."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0
        self.dim, self.name, self.identity = inner.dim, inner.name, inner.identity

    def __call__(self, texts):
        self.calls += 1
        if self.calls > self.n:
            raise _Interrupted
        return self.inner(texts)


def test_encode_resumes_where_it_stopped(built, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(built, root)
    (root / "vectors" / "bill.npy").unlink()
    n_texts = Manifest.load(root).counts["vocab"]["bill"]
    with pytest.raises(_Interrupted):
        _encode_rows(
            _vocab_texts(root, "bill"), _DiesAfter(HashEncoder(32), 2), 8, root / "vectors" / "bill.npy"
        )
    assert not (root / "vectors" / "bill.npy").exists()  # nothing half-written in place
    counted = _DiesAfter(HashEncoder(32), 10**6)
    done_now = _encode_rows(_vocab_texts(root, "bill"), counted, 8, root / "vectors" / "bill.npy")
    assert done_now == n_texts - 16 and counted.calls == -(-(n_texts - 16) // 8)
    np.testing.assert_array_equal(load_vectors(root, "bill"), load_vectors(built, "bill"))


def test_finished_modalities_are_not_encoded_again(built, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(built, root)
    again = encode_dataset(root, "hash", dim=32)
    assert set(again["encoded_rows"].values()) == {0}
    other = encode_dataset(root, "hash", dim=16)  # a different encoder re-encodes everything
    assert all(v > 0 for v in other["encoded_rows"].values())
    assert Manifest.load(root).encoders["active"]["dim"] == 16


def test_a_second_build_reuses_the_texts_the_first_one_encoded(built, raw_world, tmp_path):
    first = Manifest.load(built)
    second = tmp_path / "earlier"
    cutoff = (dt.datetime.fromisoformat(first.cutoff) - dt.timedelta(days=20)).isoformat()
    build(BuildConfig(min_class_users=0, raw=str(raw_world), out=str(second), cutoff=cutoff, users_per_shard=100,
                      row_group_size=32, tokenizer_vocab=1024))  # fmt: skip
    out = encode_dataset(second, "hash", dim=32, reuse=built)
    plain = tmp_path / "plain"
    shutil.copytree(second, plain)
    shutil.rmtree(plain / "vectors")
    fresh = encode_dataset(plain, "hash", dim=32)
    for m in first.event_modalities:
        # the same vectors as encoding from scratch, texts in common copied, not encoded again
        np.testing.assert_array_equal(load_vectors(second, m), load_vectors(plain, m))
        texts = set(pq.read_table(second / "vocab" / f"{m}.parquet").column("text").to_pylist())
        known = set(pq.read_table(built / "vocab" / f"{m}.parquet").column("text").to_pylist())
        assert out["reused_rows"][m] == len(texts & known) and out["encoded_rows"][m] == len(texts)
        assert fresh["reused_rows"][m] == 0
    assert sum(out["reused_rows"].values()) > 0


def test_minilm_encodes_offline_from_the_packaged_weights(built, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "d"
    shutil.copytree(built, root)
    out = encode_dataset(root, "minilm", batch_size=64)
    assert out["dim"] == 384
    v = load_vectors(root, "app").astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=2e-3)
    texts = pq.read_table(root / "vocab" / "app.parquet").column("text").to_pylist()
    music = [i for i, t in enumerate(texts) if "Music" in t]
    other = [i for i, t in enumerate(texts) if "Music" not in t and "Music" not in t]
    if len(music) >= 2:  # two music apps are closer to each other than to the average app
        assert v[music[0]] @ v[music[1]] > np.mean([v[music[0]] @ v[j] for j in other])


def _plain_copy(built, folder):
    """``built`` without its vectors (as the build leaves it)."""
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("vectors"))
    manifest = Manifest.load(folder)
    manifest.files = {k: v for k, v in manifest.files.items() if not k.startswith("vectors/")}
    manifest.encoders = {}
    manifest.save(folder)
    return folder


@pytest.mark.parametrize("parts", [2, 5])
def test_encode_split_over_array_tasks_gives_the_one_process_vectors(built, tmp_path, parts):
    """Parts are whole batches of the one-process run, so a padded encoder (a small BERT here) sees
    the same batches and gives the same bits; --merge N joins them and records them in the manifest."""
    from tests.test_faults import tiny_text_encoder

    model = tiny_text_encoder(tmp_path / "bert", built / "tokenizer", seed=0)
    one = _plain_copy(built, tmp_path / "one")
    encode_dataset(one, str(model), batch_size=16)
    split = _plain_copy(built, tmp_path / "split")
    for i in reversed(range(parts)):
        encode_dataset(split, str(model), batch_size=16, part=PartitionSpec(i, parts))
    assert not (split / "vectors" / "bill.npy").exists() and "active" not in Manifest.load(split).encoders
    again = encode_dataset(split, str(model), batch_size=16, part=PartitionSpec(0, parts))  # a rerun task
    assert set(again["encoded_rows"].values()) == {0}
    encode_dataset(split, str(model), batch_size=16, merge=parts)
    a, b = Manifest.load(one), Manifest.load(split)
    assert a.encoders == b.encoders
    for mod in a.event_modalities:
        np.testing.assert_array_equal(load_vectors(one, mod), load_vectors(split, mod))
        assert a.files[f"vectors/{mod}.npy"] == b.files[f"vectors/{mod}.npy"]
    assert not (split / "vectors" / ".parts").exists()


def test_a_missing_encode_part_at_the_merge_is_one_line_and_nothing_is_written(built, tmp_path):
    from tests.conftest import run_qanchor
    from tests.test_faults import files_under, one_line_error

    data = _plain_copy(built, tmp_path / "d")
    for i in (0, 2):
        run_qanchor("encode", "--data", str(data), "--encoder", "hash", "--dim", "32", "--part", f"{i}/3")
    before = files_under(data)
    proc = run_qanchor(
        "encode", "--data", str(data), "--encoder", "hash", "--dim", "32", "--merge", "3", check=False
    )
    one_line_error(proc, "part 1/3", "missing")
    assert files_under(data) == before
    proc = run_qanchor(
        "encode", "--data", str(data), "--encoder", "hash", "--dim", "32", "--part", "3/3", check=False
    )
    one_line_error(proc, "--part", "out of range")


def test_encode_part_auto_reads_the_launchers_environment(monkeypatch):
    from data_modules.encode.dataset import resolve_part
    from data_modules.util.errors import DataError

    for name in (
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "RANK",
        "WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DataError, match="auto"):
        resolve_part("auto")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_part("auto") == PartitionSpec(1, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert resolve_part("auto") == PartitionSpec(2, 3)
