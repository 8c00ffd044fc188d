"""Issue 27 part 2: the gradient cache gives the plain step's gradients (1 process and 2 gloo ranks,
through the real CLI and Lightning Trainer), replays each chunk's dropout, and resumes exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from data_modules.builder.runner import BuildConfig, build
from data_modules.encode.dataset import encode_dataset
from data_modules.loading.collate import batch_rows
from qanchor_pl.model.config import LoraSpec
from qanchor_pl.train.grad_cache import GradCacheSpec, cached_forward, chunk_batches
from tests.conftest import run_qanchor
from tests.helpers.cli_args import pretrain_args
from tests.helpers.tiny import model_for

# Every loss on, and every parameter kind that trains: LoRA (dropout off, so that chunks and the
# whole batch draw no masks), a learned temperature, the dense future tower, the reconstruction
# decoder; the margin filter active from step 0; 8 users cut into chunks of 3, 3 and 2.
EVERY_LOSS = ["--model.arch.lora.r", "4", "--model.arch.lora.alpha", "8", "--model.arch.lora.dropout", "0.0",
              "--model.contrastive.learnable_temperature", "true", "--model.contrastive.margin_warmup_steps", "0",
              "--model.future.weight", "0.5", "--model.future.form", "dense", "--data.future_negatives", "16",
              "--model.reconstruction_weight", "0.3", "--data.batch_size", "8", "--trainer.precision", "64-true"]  # fmt: skip


@pytest.fixture(scope="module")
def future_data(raw_world, tmp_path_factory):
    """``raw_world`` built with future events (the dense anchor's positives), hash-encoded."""
    out = tmp_path_factory.mktemp("gc") / "data"
    build(BuildConfig(raw=str(raw_world), out=str(out), future_events=True, users_per_shard=100,
                      row_group_size=32, tokenizer_vocab=1024, min_class_users=0))  # fmt: skip
    encode_dataset(out, "hash", dim=32)
    return out


def _first_step_grads(data, run, *extra: str) -> list[dict[str, torch.Tensor]]:
    dump = {"class_path": "tests.helpers.grad_dump.GradDump", "init_args": {"out": str(run / "grads")}}
    run_qanchor(*pretrain_args(data, run, 1, *EVERY_LOSS, *extra, "--trainer.callbacks+", json.dumps(dump)),
                timeout=900)  # fmt: skip
    return [torch.load(f, weights_only=True) for f in sorted((run / "grads").glob("grads-rank*.pt"))]


def _assert_same_gradients(plain: dict[str, torch.Tensor], cached: dict[str, torch.Tensor]) -> None:
    assert plain.keys() == cached.keys()
    kinds = {"lora_B", "log_temperature", "event_projection", "reconstruction", "head", "user_encoder"}
    nonzero = [n for n, g in plain.items() if bool(g.abs().max() > 0)]  # (LoRA's A waits for B to move)
    assert all(any(k in n for n in nonzero) for k in kinds), sorted(nonzero)  # every kind got a gradient
    for name, g in plain.items():
        scale = float(g.abs().max())
        if scale == 0:
            assert not cached[name].any(), f"{name}: zero in the plain step only"
            continue
        worst = float((g - cached[name]).abs().max())
        assert worst <= 1e-6 * scale, f"{name}: gradient differs by {worst / scale:.2e} of its largest entry"


@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_one_step_gradients_equal_the_plain_step(future_data, tmp_path, devices):
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"] if devices == 2 else []
    plain = _first_step_grads(future_data, tmp_path / "plain", *ddp)
    cached = _first_step_grads(future_data, tmp_path / "cached", *ddp, "--model.grad_cache.chunk_size", "3")
    assert len(plain) == len(cached) == devices
    for p, c in zip(plain, cached):
        _assert_same_gradients(p, c)
    if devices == 2:  # DDP synced the cached step's gradients: both ranks hold the same average
        _assert_same_gradients(cached[0], cached[1])


def test_each_chunk_replays_its_own_dropout_masks(model_data):
    inputs, batch = model_data
    model = model_for(inputs, lora=LoraSpec(r=4, alpha=8, dropout=0.5)).train()
    with torch.no_grad():  # LoRA's B starts at zero, which would hide its dropout
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    rows = batch["query_ids"].shape[0]
    chunks = chunk_batches(batch, rows, 4)
    assert [c["query_ids"].shape[0] for c in chunks] == [4, 2]
    torch.manual_seed(3)
    cache = cached_forward(model, chunks, semantic=True, ntp=True, device=torch.device("cpu"))
    assert cache.u.shape[0] == rows and len(cache.ntp_tokens) == 2
    for k, chunk in enumerate(chunks):
        lo = 4 * k
        cache.rng[k].restore()
        again = model(chunk, semantic=True, ntp=True)
        assert torch.equal(again.u, cache.u[lo : lo + chunk["query_ids"].shape[0]])
        drawn_anew = model(chunk, semantic=True, ntp=True)  # the rng moved on: other masks
        assert not torch.allclose(drawn_anew.u, again.u)


def test_slicing_keeps_whole_batch_entries_and_the_spec_checks_its_size():
    batch = {"a": torch.arange(6), "ids": list("abcdef"), "nested": {"x": torch.ones(6, 2)}, "k": torch.ones(3),
             "future": {"x": torch.ones(6)}}  # fmt: skip
    part = batch_rows({k: v for k, v in batch.items() if k != "future"}, slice(2, 4), 6)
    assert part["a"].tolist() == [2, 3] and part["ids"] == ["c", "d"] and part["nested"]["x"].shape == (2, 2)
    assert part["k"].shape == (3,)  # not per-row: kept whole
    assert "future" not in chunk_batches(batch, 6, 4)[0]
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        GradCacheSpec(chunk_size=0)


@pytest.mark.slow
def test_resume_with_the_gradient_cache_stays_exact(built, tmp_path):
    # dropout live (LoRA 0.1): a resumed step must replay the same chunks' masks
    cache = ["--model.grad_cache.chunk_size", "5", "--model.arch.lora.r", "4", "--model.arch.lora.alpha", "8",
             "--model.arch.lora.dropout", "0.1", "--checkpoint.every_n_train_steps", "3"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    run_qanchor(*pretrain_args(built, full, 6, *cache), timeout=900)
    shutil.copytree(full, part)  # then back to step 3, and on to 6 again
    for name in ("step0000006.ckpt", "last.ckpt"):
        (part / "checkpoints" / name).unlink()
    run_qanchor(*pretrain_args(built, part, 6, *cache, "--ckpt_path", str(part / "checkpoints" / "step0000003.ckpt")),
                timeout=900)  # fmt: skip

    def weights(run):
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    a, b = weights(full), weights(part)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0  # bit for bit on the same machine


def test_gradient_accumulation_with_the_cache_is_refused_by_name(built, tmp_path):
    proc = run_qanchor(*pretrain_args(built, tmp_path / "run", 2, "--model.grad_cache.chunk_size", "4",
                                      "--trainer.accumulate_grad_batches", "2"), check=False)  # fmt: skip
    assert proc.returncode != 0 and "accumulate_grad_batches > 1" in proc.stderr


@pytest.mark.gpu
def test_on_cuda_each_chunk_replays_its_dropout_and_the_gradients_match(model_data, future_data):
    """The CUDA rng state is saved and restored per chunk; the cached step's gradients equal the
    plain step's on the GPU (float32; 1e-4 of each tensor's largest entry: CUDA kernels may pick
    other reduction orders for other batch shapes)."""
    replay_and_gradients_on(torch.device("cuda"), model_data, future_data, tolerance=1e-4)


def replay_and_gradients_on(cuda: torch.device, model_data, future_data, tolerance: float) -> None:
    """The GPU test's body, for any device (its CPU run is how the test itself was checked here)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from data_modules.loading.datamodule import UserUDataModule
    from qanchor_pl.model.config import DataInputs
    from qanchor_pl.train.pretrain import PretrainModule

    inputs, batch = model_data
    model = model_for(inputs, lora=LoraSpec(r=4, alpha=8, dropout=0.5)).train().to(cuda)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = move_data_to_device(batch, cuda)
    chunks = chunk_batches(batch, batch["query_ids"].shape[0], 4)
    torch.manual_seed(3)
    cache = cached_forward(model, chunks, semantic=True, ntp=True, device=cuda)
    for k, chunk in enumerate(chunks):
        cache.rng[k].restore()
        again = model(chunk, semantic=True, ntp=True)
        assert torch.equal(again.u, cache.u[4 * k : 4 * k + chunk["query_ids"].shape[0]])

    dm = UserUDataModule(str(future_data), batch_size=8, future_negatives=16)
    batch = move_data_to_device(next(iter(dm.make_dataset())), cuda)
    arch = {"backbone": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
            "intermediate_size": 128}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "head_hidden": 64, "embed_dim": 16}  # fmt: skip
    grads = []
    for chunk_size in (None, 3):
        torch.manual_seed(0)
        module = PretrainModule(arch=arch, contrastive={"margin_warmup_steps": 0}, reconstruction_weight=0.3,
                                future={"weight": 0.5, "form": "dense"}, grad_cache={"chunk_size": chunk_size},
                                inputs=DataInputs(**dm.model_inputs())).to(cuda).train()  # fmt: skip
        if chunk_size:
            loss = module.compute_loss_cached(batch, lambda surrogate: surrogate.backward())[0]
        else:
            loss = module.compute_loss(batch)[0]
        loss.backward()
        grads.append({n: p.grad for n, p in module.named_parameters() if p.grad is not None})
    plain, cached = grads
    assert plain.keys() == cached.keys()
    for name, g in plain.items():
        assert float((g - cached[name]).abs().max()) <= tolerance * max(float(g.abs().max()), 1e-12), name
