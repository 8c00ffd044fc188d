"""DeepSpeed compositions on CPU: the strategy and its DeepSpeed config build from each resolved
composition (base + overlays). (A Lightning + DeepSpeed fit needs CUDA GPUs; that check runs on
the device when one is lent.)"""

from __future__ import annotations

import importlib

import pytest
import yaml

from qanchor_pl.recipes import COMPOSITIONS
from tests.test_front_door import _main

DEEPSPEED = [name for name, layers in COMPOSITIONS.items() if any("zero" in layer for layer in layers)]


def resolved_trainer(name: str) -> dict:
    args = [a for r in COMPOSITIONS[name] for a in ("--config", r)]
    code, text = _main("pretrain", *args, "--print_config")
    assert code == 0, text
    return yaml.safe_load(text)["trainer"]


def test_there_are_zero2_and_zero3_compositions():
    stages = {resolved_trainer(name)["strategy"]["init_args"]["stage"] for name in DEEPSPEED}
    assert stages == {2, 3}


@pytest.mark.parametrize("name", DEEPSPEED)
def test_strategy_and_config_build_from_the_composition(name):
    trainer = resolved_trainer(name)
    spec = trainer["strategy"]
    module, _, cls = spec["class_path"].rpartition(".")
    init = {k: v for k, v in spec["init_args"].items() if k in ("stage", "exclude_frozen_parameters",
                                                                "logging_batch_size_per_gpu")}  # fmt: skip
    strategy = getattr(importlib.import_module(module), cls)(**init)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == spec["init_args"]["stage"]
    assert strategy.exclude_frozen_parameters, "LoRA checkpoints must leave the frozen backbone out"
    assert trainer["precision"] == "bf16-mixed" and trainer["num_nodes"] * trainer["devices"] == 64
