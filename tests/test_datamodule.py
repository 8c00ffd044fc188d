"""UserUDataModule and ScenarioDataModule: batch contents, epochs, workers, scenario labels."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from data_modules.encode.dataset import load_vectors
from data_modules.loading.datamodule import ScenarioDataModule, UserStreamLoader, UserUDataModule
from data_modules.loading.dataset import choose_pair


def _epoch(dm, epoch=0, workers=0):
    ds = dm.make_dataset()
    loader = UserStreamLoader(ds, num_workers=workers)
    loader.set_epoch(epoch)
    return list(loader)


@pytest.fixture(scope="module")
def shards(built):
    return {
        r["user_id"]: r
        for r in pl.concat([pl.read_parquet(p) for p in (built / "shards").glob("*.parquet")]).iter_rows(
            named=True
        )
    }


def test_batch_holds_vectors_masks_tabular_and_one_tokenised_qa_pair(built, shards):
    dm = UserUDataModule(str(built), batch_size=8, max_events="bill=5")
    batch = _epoch(dm)[0]
    assert len(batch["user_id"]) == 8
    vec = {m: load_vectors(built, m) for m in dm.manifest.event_modalities}
    for i, u in enumerate(batch["user_id"]):
        row = shards[u]
        for m in dm.manifest.event_modalities:
            ids = row[f"ev_{m}"][-dm.caps[m] :]
            mask = batch["event_mask"][m][i].numpy()
            assert mask.sum() == len(ids) and mask[: len(ids)].all()
            np.testing.assert_array_equal(batch["events"][m][i, : len(ids)].numpy(), vec[m][ids])
        np.testing.assert_allclose(batch["tabular"][i].numpy(), row["tabular"], rtol=1e-6)
        k = choose_pair(0, 0, u, len(row["qa_query"]))
        assert batch["query"][i] == row["qa_query"][k] and batch["answer"][i] == row["qa_answer"][k]
        q_ids = batch["query_ids"][i][batch["query_mask"][i]].tolist()
        assert dm.tokenizer.decode(q_ids) == row["qa_query"][k]
        a_ids = batch["answer_ids"][i][batch["answer_mask"][i]].tolist()
        assert a_ids[-1] == dm.tokenizer.eos_token_id
    assert batch["events"]["bill"].shape[1] <= 5 and dm.caps["bill"] == 5
    assert batch["events"]["bill"].dtype.is_floating_point


@pytest.mark.parametrize("window", [0, 4])
def test_one_epoch_serves_every_user_once_with_workers_and_epochs_reshuffle(built, shards, window):
    dm = UserUDataModule(str(built), batch_size=16, buffer_size=32, length_window=window)
    e0 = [u for b in _epoch(dm, 0, workers=2) for u in b["user_id"]]
    e0_again = [u for b in _epoch(dm, 0, workers=2) for u in b["user_id"]]
    e1 = [u for b in _epoch(dm, 1, workers=2) for u in b["user_id"]]
    assert sorted(e0) == sorted(shards) and sorted(e1) == sorted(shards)
    assert e0 == e0_again and e0 != e1
    assert len(dm.make_dataset()) == len(_epoch(dm, 0)) == -(-300 // 16)


def test_qa_choice_is_reproducible_and_varies_over_epochs(built):
    dm = UserUDataModule(str(built), batch_size=50)
    pick = lambda e, w: {u: q for b in _epoch(dm, e, workers=w) for u, q in zip(b["user_id"], b["query"])}  # noqa: E731
    assert pick(0, 0) == pick(0, 2)
    assert pick(0, 0) != pick(1, 0)


def test_scenario_module_serves_the_split_with_its_labels(built):
    dm = ScenarioDataModule(str(built), scenario="Takeout", batch_size=32)
    dm.setup()
    bench = pl.read_parquet(built / "benchmarks" / "Takeout.parquet")
    test = dict(bench.filter(pl.col("split") == "test").select("user_id", "label").iter_rows())
    batches = list(dm.test_dataloader())
    got = {u: int(y) for b in batches for u, y in zip(b["user_id"], b["label"].tolist())}
    assert got == test and sum(len(b["user_id"]) for b in batches) == len(test)
    assert batches[0]["query"][0] == "Will the user show interest in takeout services?"
    train = [u for b in dm.train_dataloader() for u in b["user_id"]]
    val = [u for b in dm.val_dataloader() for u in b["user_id"]]  # carved from train, not from test
    assert set(train).isdisjoint(test) and set(val).isdisjoint(test) and set(val).isdisjoint(train)
    assert len(train) + len(val) == bench.height - len(test)


def test_unknown_scenario_and_caps_are_clear_errors(built):
    with pytest.raises(ValueError, match="unknown modalities"):
        UserUDataModule(str(built), max_events="radio=3").setup()
    from data_modules.util.errors import DataError

    with pytest.raises(DataError, match="no scenario 'Nope'"):
        ScenarioDataModule(str(built), scenario="Nope").setup()


def test_length_balanced_batches_pad_fewer_event_slots(built):
    def padding(window):
        dm = UserUDataModule(str(built), batch_size=16, buffer_size=64, length_window=window)
        real = slots = 0
        for b in _epoch(dm, 0):
            events = sum(m.sum(1) for m in b["event_mask"].values())
            real, slots = real + int(events.sum()), slots + int(events.max()) * len(events)
        return 1 - real / slots

    assert padding(8) < padding(0)
    with pytest.raises(ValueError, match="length_window must be >= 0"):
        UserUDataModule(str(built), length_window=-1)


def test_bench_data_reports_the_padding_fraction_before_and_after_length_balancing(built):
    from data_modules.loading.bench import BenchDataConfig, bench_data

    before, after = (
        bench_data(BenchDataConfig(data=str(built), batch_size=16, length_window=w)) for w in (0, 8)
    )
    assert 0 < after["padding_fraction"] < before["padding_fraction"] < 1
    assert before["samples"] == after["samples"] and after["length_window"] == 8
