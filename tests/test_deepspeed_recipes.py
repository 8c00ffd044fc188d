"""DeepSpeed recipes on CPU: the strategy and its DeepSpeed config build from each recipe.
(A Lightning + DeepSpeed fit needs CUDA GPUs; that check runs on the device when one is lent.)"""

from __future__ import annotations

import importlib

import pytest
import yaml

from tests.conftest import ROOT

RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "DeepSpeedStrategy" in p.read_text())


def test_there_are_zero2_and_zero3_recipes():
    stages = {yaml.safe_load(p.read_text())["trainer"]["strategy"]["init_args"]["stage"] for p in RECIPES}
    assert stages == {2, 3}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_strategy_and_config_build_from_the_recipe(recipe):
    trainer = yaml.safe_load(recipe.read_text())["trainer"]
    spec = trainer["strategy"]
    module, _, name = spec["class_path"].rpartition(".")
    strategy = getattr(importlib.import_module(module), name)(**spec["init_args"])
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == spec["init_args"]["stage"]
    assert strategy.exclude_frozen_parameters, "LoRA checkpoints must leave the frozen backbone out"
    assert trainer["precision"] == "bf16-mixed" and trainer["num_nodes"] * trainer["devices"] == 64
