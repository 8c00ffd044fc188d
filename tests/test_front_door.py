"""One front door: every command in `qanchor --help`, typed configs with --config/--print_config,
shipped recipes found from anywhere and composed, one-line errors with exit code 2."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest
import yaml

from qanchor_pl.cli import ANALYZE, BENCH, COMMANDS, GROUPS, LIGHTNING, main
from qanchor_pl.recipes import COMPOSITIONS, RECIPES, recipe_names
from tests.conftest import run_qanchor
from tests.helpers.cli_args import SMALL, pretrain_args
from tests.helpers.tb import scalars

LIGHTNING_STAGES = {"pretrain", "tune"}


def _main(*argv: str) -> tuple[int, str]:
    """`qanchor ARGV` in this process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as stop:  # --help / --print_config exit from the parser
            code = stop.code or 0
    return code, out.getvalue()


def test_help_lists_every_command_with_one_line():
    code, text = _main("--help")
    assert code == 0
    for name in [*COMMANDS, *LIGHTNING, *GROUPS]:
        assert f"    {name} " in text, name
    for group, (table, _) in GROUPS.items():
        code, text = _main(group, "--help")
        assert code == 0 and all(f"    {name} " in text for name in table), group


@pytest.mark.parametrize(
    "command", [*COMMANDS, *(f"bench {b}" for b in BENCH), *(f"analyze {a}" for a in ANALYZE)]
)
def test_every_command_shows_its_options_with_defaults(command):
    code, text = _main(*command.split(), "--help")
    assert code == 0 and "--config CONFIG" in text and "--print_config" in text
    assert "default:" in text, command


def test_tune_help_shows_all_scenarios():
    proc = run_qanchor("tune", "--help")
    assert "--all_scenarios" in proc.stdout and "--ckpt_path" in proc.stdout and "--step_log" in proc.stdout


@pytest.mark.parametrize("recipe", recipe_names(), ids=str)
def test_every_recipe_loads_against_its_command(recipe):
    """Each shipped recipe is parsed and type-checked by the command of its folder."""
    stage = recipe.split("/")[0]
    assert stage in COMMANDS or stage in LIGHTNING_STAGES, f"{recipe}: recipes live in <command>/"
    code, text = _main(stage, "--config", recipe, "--print_config")
    assert code == 0, (recipe, text)
    printed = yaml.safe_load(text)
    if stage in LIGHTNING_STAGES:
        assert {"model", "data", "trainer"} <= set(printed)


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_every_documented_composition_resolves(name):
    """Overlays apply in order on the base; the resolved config is printed (and checked)."""
    args = [a for r in COMPOSITIONS[name] for a in ("--config", r)]
    code, text = _main("pretrain", *args, "--print_config")
    assert code == 0, text
    print(text)  # the resolved config, for `pytest -s`
    cfg = yaml.safe_load(text)
    layers = [yaml.safe_load((RECIPES / f"{r}.yaml").read_text()) for r in COMPOSITIONS[name]]
    expected_devices = next(
        lay["trainer"]["devices"] for lay in reversed(layers) if "devices" in lay.get("trainer", {})
    )
    assert cfg["trainer"]["devices"] == expected_devices
    if "64xa100" in " ".join(COMPOSITIONS[name]):
        assert cfg["trainer"]["num_nodes"] == 8 and cfg["model"]["lr"] == 2.0e-4  # the overlay's
        assert cfg["model"]["arch"]["lora"]["r"] == 64  # the base's, untouched by the overlays
    for stage in (2, 3):
        if f"pretrain/overlay/zero{stage}" in COMPOSITIONS[name]:
            assert cfg["trainer"]["strategy"]["init_args"]["stage"] == stage
    if "pretrain/overlay/qwen3b" in COMPOSITIONS[name]:
        assert (
            cfg["model"]["arch"]["backbone"] == "Qwen/Qwen2.5-3B-Instruct"
            and cfg["model"]["arch"]["gradient_checkpointing"]
        )


def test_shipped_recipes_resolve_from_any_working_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "qanchor_pl.cli", "embed", "--config", "embed/tiny-cpu", "--print_config"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["accelerator"] == "cpu"


def test_several_configs_compose_and_dotted_overrides_win(tmp_path):
    overlay = tmp_path / "more.yaml"
    overlay.write_text("batch_size: 7\npart_batches: 3\n")
    code, text = _main("embed", "--config", "embed/tiny-cpu", "--config", str(overlay), "--part_batches", "5",
                       "--print_config")  # fmt: skip
    cfg = yaml.safe_load(text)
    assert code == 0 and (cfg["batch_size"], cfg["part_batches"], cfg["accelerator"]) == (7, 5, "cpu")


@pytest.mark.parametrize(
    "argv, names",
    [
        (["synth", "--out", "x", "--users", "many"], ["users", "int"]),
        (["evaluate", "--data", "d", "--out", "o", "--split", "train"], ["split"]),
        (["build", "--raw", "/no/such/raw", "--out", "OUT"], ["/no/such/raw"]),
        (["embed", "--model", "m", "--data", "d"], ["out"]),
        (["export", "--ckpt", "/no/such.ckpt", "--out", "OUT"], ["/no/such.ckpt"]),
        (["pretrain", "--config", "pretrain/no-such-recipe"], ["pretrain/no-such-recipe"]),
        (["demo", "--nonsense", "1"], ["nonsense"]),
    ],
    ids=["bad-value", "bad-choice", "missing-data", "missing-option", "missing-checkpoint", "unknown-recipe",
         "unknown-option"],
)  # fmt: skip
def test_user_mistakes_end_with_one_line_and_exit_code_2(tmp_path, argv, names):
    argv = [str(tmp_path / a) if a in ("OUT",) else a for a in argv]
    proc = run_qanchor(*argv, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in names), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    verbose = run_qanchor(*argv, "-v", check=False)
    assert verbose.returncode == 2
    if argv[0] in ("build", "export"):  # the failure happened inside the command: -v shows where
        assert "Traceback" in verbose.stderr


def test_bench_data_on_an_empty_data_set_is_an_error(built, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(built, data)
    proc = run_qanchor("bench", "data", "--data", str(data), "--batch_size", "1024", check=False)
    assert proc.returncode == 2 and "nothing to time" in proc.stderr and "samples_per_s" not in proc.stdout


def test_a_fresh_resume_says_so_logs_steps_and_real_hparams(built, tmp_path):
    """`--ckpt_path last` on an empty run folder says it starts fresh; `--data.seed` works; the
    step log reaches stderr with the progress bar off; HPARAMS carry real metrics, no hp_metric."""
    run = tmp_path / "run"
    proc = run_qanchor(*pretrain_args(built, run, 4, "--ckpt_path", "last", "--data.seed", "1",
                                      "--step_log.every_n_steps", "2"))  # fmt: skip
    assert f"no checkpoint in {run}: starting fresh" in proc.stderr
    steps = [line for line in proc.stderr.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["2/4", "4/4"] and all(
        " loss " in s and " lr " in s for s in steps
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 4 and summary["train_loss"] > 0
    tags = scalars(run / "tensorboard" / "run")
    assert "hp_metric" not in tags
    assert "--data.seed" not in SMALL  # the override above is the only seed given
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    plugins = {value.metadata.plugin_data.plugin_name
               for path in (run / "tensorboard" / "run").glob("events.out.tfevents.*")
               for event in EventFileLoader(str(path)).Load() for value in event.summary.value}  # fmt: skip
    assert "hparams" in plugins  # the HPARAMS view's record, written with the metrics
    assert tags["hp/train_loss"][-1][1] == pytest.approx(summary["train_loss"], rel=1e-5)


def test_a_repeated_evaluation_does_not_double_its_curves(tmp_path):
    import numpy as np

    from qanchor_pl.eval.report import log_tensorboard

    rng = np.random.default_rng(0)
    curves = {"row": {"S": (rng.random(50), (rng.random(50) > 0.5).astype(int))}}
    rows = {"row": {"Avg": {"auc": 0.6, "ks": 0.2}}}
    for _ in range(2):
        log_tensorboard(tmp_path, curves, None, rows, {"split": "test"})
    tags = scalars(tmp_path / "tensorboard")
    steps = [s for s, _ in tags["roc/S/row"]]
    assert len(steps) == len(set(steps)) == 101  # one point per FPR grid step, however many runs
    assert not list(tmp_path.glob(".tensorboard.tmp-*"))


def test_an_optimizer_from_the_command_line_keeps_the_schedule(built, tmp_path):
    """`--optimizer` alone swaps AdamW for SGD; the warmup-cosine schedule stays (stock
    LightningCLI would replace configure_optimizers and drop it)."""
    run = tmp_path / "run"
    run_qanchor(*pretrain_args(built, run, 4, "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1",
                               "--model.lr", "0.1", "--model.warmup_steps", "2"))  # fmt: skip
    lrs = [v for _, v in scalars(run / "tensorboard" / "run")["train/lr"]]
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)  # warm-up: 1/2, then 2/2
    assert lrs[-1] < 0.1  # cosine decay after the warm-up
    import torch

    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert "momentum_buffer" in str(state) or "momentum" in str(state["param_groups"][0])  # SGD's state


def test_boolean_options_stand_alone_and_dashes_equal_underscores():
    code, text = _main("tune", "--config", "tune/tiny-cpu", "--all-scenarios", "--print_config")
    assert code == 0 and yaml.safe_load(text)["all_scenarios"] is True
    code, text = _main("demo", "--fast", "--pretrain-steps", "7", "--print_config")
    cfg = yaml.safe_load(text)
    assert code == 0 and cfg["fast"] is True and cfg["pretrain_steps"] == 7
    code, text = _main(
        "embed", "--model", "m", "--data", "d", "--out", "o", "--kv_cache", "false", "--print_config"
    )
    assert code == 0 and yaml.safe_load(text)["kv_cache"] is False
