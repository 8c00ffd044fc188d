"""Issue 25: the future-behaviour anchor, the dense all-action loss, the count reconstruction and
count-aware pooling, against hand-computed values; 2 gloo ranks equal one process; the future
window's events reach pretraining data only."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from data_modules.builder.runner import BuildConfig, build
from data_modules.dataset.manifest import Manifest
from data_modules.encode.dataset import encode_dataset
from data_modules.loading.collate import category_key
from data_modules.loading.datamodule import UserUDataModule
from qanchor_pl.model.categories import CategoryIndex
from qanchor_pl.model.user_encoder import HierarchicalUserEncoder
from qanchor_pl.train.future import (
    dense_all_action_loss,
    future_occurrence,
    multilabel_loss,
    reconstruction_loss,
)
from tests.conftest import ROOT, free_port, torchrun_env
from tests.helpers.future_case import make_case, make_model, total_loss

K = {c: category_key(c) for c in ("x", "y", "other")}


def test_category_index_maps_keys_by_name_and_unknown_to_the_last_slot():
    index = CategoryIndex({"a": ("y", "x")})
    keys = torch.tensor([[K["x"], K["y"], K["other"], 0]])
    assert index.index("a", keys).tolist() == [[1, 0, 2, 2]]
    counts = index.counts("a", keys, torch.tensor([[True, True, True, False]]))
    assert counts.tolist() == [[1.0, 1.0, 3.0]]  # y, x, then all events (the unknown one too)


def test_future_occurrence_targets_and_multilabel_loss_by_hand():
    index = CategoryIndex({"a": ("x", "y")})
    future = {"a": {"category": torch.tensor([[K["x"], K["y"], K["other"]], [K["y"], 0, 0]]),
                    "age": torch.tensor([[2.0, 20.0, 9.0], [29.5, 0.0, 0.0]]),
                    "mask": torch.tensor([[True, True, True], [True, False, False]])}}  # fmt: skip
    t = future_occurrence(index, ["a"], future, (7, 30))
    # layout: category-major, windows inner: x@7, x@30, y@7, y@30, any@7, any@30
    assert t.tolist() == [[1, 1, 0, 1, 1, 1], [0, 0, 0, 1, 0, 1]]
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0, -0.5], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    rows = torch.tensor([True, False])

    def bce(z, y):
        return -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))

    expected = np.mean([bce(float(z), float(y)) for z, y in zip(logits[0], t[0])])
    assert abs(float(multilabel_loss(logits, t, rows)) - expected) < 1e-6


def test_reconstruction_loss_by_hand():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert abs(float(reconstruction_loss(pred, target)) - (0.5 + 1.0) / 2) < 1e-7


def test_dense_all_action_loss_by_hand():
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
    pos = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 2])
    logq = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5])
    neg = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=-1)
    neg_logq = torch.tensor([-2.0, -2.0])
    tau, rows = 0.2, torch.tensor([True, True, False])
    per_user = []
    for i in range(2):  # user 2 is not a selected row
        losses = []
        for p in (owner == i).nonzero().flatten().tolist():

            def score(e, q, i=i):
                return float(u[i] @ e) / tau - float(q)

            s_p = score(pos[p], logq[p])
            others = [score(pos[j], logq[j]) for j in range(5) if owner[j] != i]
            others += [score(neg[j], neg_logq[j]) for j in range(2)]
            losses.append(-s_p + np.log(np.exp(s_p) + np.sum(np.exp(others))))
        per_user.append(np.mean(losses))
    got = dense_all_action_loss(u, pos, owner, logq, neg, neg_logq, tau, rows)
    assert abs(float(got) - np.mean(per_user)) < 1e-5


@pytest.mark.parametrize("sizes", ["4,4", "3,5"])
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, sizes):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(ROOT / "tests/helpers/gloo_future.py"), "--out", str(tmp_path), "--sizes", sizes]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model = make_model()
    total_loss(model, make_case(sum(int(s) for s in sizes.split(",")))).backward()
    for name, p in model.named_parameters():
        for r in range(2):
            assert torch.allclose(ranks[r]["grads"][name], p.grad, atol=1e-5, rtol=1e-4), (name, r)


def _encoder(pooling: str, count_token: bool) -> HierarchicalUserEncoder:
    torch.manual_seed(0)
    return HierarchicalUserEncoder({"a": 4}, 0, 8, 8, pooling=pooling, log_count_mean={"a": 1.5},
                                   categories={"a": ("x", "y")}, count_token=count_token)  # fmt: skip


def test_count_aware_pooling_and_the_count_token_see_a_change_of_count_alone():
    vec = torch.randn(1, 1, 4)
    few, many = vec.expand(1, 2, 4), vec.expand(1, 6, 4)  # the same events: the same mean
    cats = {2: {"a": torch.full((1, 2), K["x"])}, 6: {"a": torch.full((1, 6), K["x"])}}
    mask = {2: {"a": torch.ones(1, 2, dtype=torch.bool)}, 6: {"a": torch.ones(1, 6, dtype=torch.bool)}}
    with torch.no_grad():
        for pooling, token, moves in (("mean", False, False), ("pna", False, True), ("mean", True, True)):
            enc = _encoder(pooling, token)
            a = enc({"a": few}, mask[2], None, event_category=cats[2])
            b = enc({"a": many}, mask[6], None, event_category=cats[6])
            changed = not torch.allclose(a.modality["a"], b.modality["a"], atol=1e-5)
            if token:
                changed = not torch.allclose(a.counts, b.counts, atol=1e-5)
            assert changed == moves, (pooling, token)


@pytest.fixture(scope="module")
def two_cutoffs(raw_world, built, tmp_path_factory):
    """The pretraining data (future events, cut one label window before ``built``'s cutoff)."""
    eval_cut = dt.datetime.fromisoformat(Manifest.load(built).cutoff)
    out = tmp_path_factory.mktemp("pre") / "data"
    build(BuildConfig(raw=str(raw_world), out=str(out), cutoff=(eval_cut - dt.timedelta(days=30)).isoformat() + "+00:00",
                      history_days=60, future_events=True, users_per_shard=100, row_group_size=32,
                      tokenizer_vocab=1024, min_class_users=0))  # fmt: skip
    encode_dataset(out, "hash", dim=32)
    return out, eval_cut


def test_future_events_reach_pretraining_data_only_and_end_before_the_label_window(built, two_cutoffs):
    pre, eval_cut = two_cutoffs
    pre_cols = pq.read_schema(next((pre / "shards").glob("*.parquet"))).names
    eval_cols = pq.read_schema(next((built / "shards").glob("*.parquet"))).names
    assert [c for c in pre_cols if c.startswith("fut_")] and not [
        c for c in eval_cols if c.startswith("fut_")
    ]
    shards = pl.concat([pl.read_parquet(f) for f in sorted((pre / "shards").glob("*.parquet"))])
    times = pl.concat([shards[c].explode().drop_nulls() for c in shards.columns if c.startswith("fut_ts_")])
    assert times.len() > 0 and times.max() < eval_cut  # every future event precedes the labels' window
    pre_batch = next(iter(UserUDataModule(str(pre), batch_size=8).make_dataset()))
    eval_batch = next(iter(UserUDataModule(str(built), batch_size=8).make_dataset()))
    assert "future" in pre_batch and "future" not in eval_batch
    ages = torch.cat([f["age"][f["mask"]] for f in pre_batch["future"].values()])
    assert ages.min() >= 0 and ages.max() < 30
