"""Soft prompt tuning: the frozen model stays frozen, the artifact is small, every scenario runs."""

from __future__ import annotations

import json

import pytest
import torch

from data_modules.loading.datamodule import ScenarioDataModule
from qanchor_pl.train.tune import PromptTuneModule, load_prompt, prototype_logits
from tests.conftest import run_qanchor
from tests.helpers.cli_args import tune_args
from tests.helpers.tb import scalars


def test_prototype_logits_reduce_to_eq7_with_one_prototype_per_class():
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p = torch.randn(2, 8)
    expected = u @ torch.nn.functional.normalize(p, dim=-1).T / 0.1
    assert torch.allclose(prototype_logits(u, p, 2, 0.1), expected, atol=1e-6)
    many = torch.randn(6, 8)  # 3 per class: class logit = logsumexp of its three
    sims = u @ torch.nn.functional.normalize(many, dim=-1).T / 0.1
    assert torch.allclose(
        prototype_logits(u, many, 2, 0.1)[:, 1], torch.logsumexp(sims[:, 3:], -1), atol=1e-6
    )


def test_only_prompt_and_prototypes_learn(built, pretrained):
    module = PromptTuneModule(pretrained=str(pretrained), n_prompt=4, prototypes_per_class=2, lr=5e-2)
    frozen = {k: v.clone() for k, v in module.model.state_dict().items()}
    dm = ScenarioDataModule(str(built), scenario="Login", batch_size=32, shuffle=False)
    batch = next(iter(dm.split_dataset("train", shuffle=False)))
    opt = torch.optim.AdamW([module.prompt, module.prototypes], lr=5e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(
            module.class_logits(module.embed(batch)), batch["label"].long()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(frozen[k], v) for k, v in module.model.state_dict().items())
    assert not any(p.requires_grad for p in module.model.parameters())


def test_tune_one_scenario_writes_a_small_artifact_and_logs_val_auc(built, pretrained, tmp_path):
    run_qanchor(*tune_args(built, pretrained, tmp_path / "tune", 10, "--data.scenario", "Takeout"))
    out = tmp_path / "tune" / "Takeout"
    meta, prompt, protos = load_prompt(out / "prompt")
    assert meta["scenario"] == "Takeout" and meta["query"]
    assert prompt.shape == (6, meta["hidden_size"]) and protos.shape == (2, meta["embed_dim"])
    size = sum(p.stat().st_size for p in (out / "prompt").iterdir())
    assert size < 20_000  # the prompt and two prototypes, not the backbone
    tags = scalars(out / "tensorboard" / "run-seed0")  # tuning versions carry the seed
    assert [s for s, _ in tags["val/auc"]] == [4, 9] and all(0.0 <= v <= 1.0 for _, v in tags["val/auc"])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == {"prompt", "prototypes"}


@pytest.mark.slow
def test_all_scenarios_in_one_command(built, pretrained, tmp_path):
    run_qanchor(*tune_args(built, pretrained, tmp_path / "tune", 2, "--all_scenarios", "true",
                           "--trainer.val_check_interval", "2"))  # fmt: skip
    names = [s["name"] for s in json.loads((built / "scenarios.json").read_text())]
    done = sorted(p.parent.parent.name for p in (tmp_path / "tune").glob("*/prompt/prompt.json"))
    assert done == sorted(names) and len(names) == 10


def test_validation_users_are_carved_from_train_and_never_test(built):
    import polars as pl

    dm = ScenarioDataModule(str(built), scenario="Takeout", batch_size=32)
    dm.setup()
    users = {}
    for split in ("train", "val", "test"):
        ds = dm.split_dataset(split, shuffle=False)
        users[split] = {u for batch in ds for u in batch["user_id"]}
    bench = pl.read_parquet(built / "benchmarks" / "Takeout.parquet")
    train = set(bench.filter(pl.col("split") == "train")["user_id"])
    assert users["train"] | users["val"] == train and not users["train"] & users["val"]
    assert users["test"] == set(bench.filter(pl.col("split") == "test")["user_id"])
    assert 0.1 < len(users["val"]) / len(train) < 0.3
    loaders = {name: getattr(dm, f"{name}_dataloader")().dataset for name in ("val", "test")}
    assert {u for b in loaders["val"] for u in b["user_id"]} == users["val"]
