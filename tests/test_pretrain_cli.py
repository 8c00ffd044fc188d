"""`qanchor pretrain` end to end: recipes, TensorBoard, checkpoints, exact resume after SIGKILL, DDP."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_qanchor
from tests.helpers.cli_args import LORA, RECIPE, SMALL, pretrain_args
from tests.helpers.tb import scalars

RECIPE_COMMANDS = {"pretrain": "run_pretrain", "tune": "run_tune"}


@pytest.mark.parametrize(
    "recipe", sorted(p.relative_to(ROOT) for p in (ROOT / "recipes").rglob("*.yaml")), ids=str
)
def test_every_recipe_loads_against_the_signatures(recipe):
    """Each recipe is parsed and type-checked by the command of its folder (recipes/<command>/)."""
    from qanchor_pl import lightning_cli

    command = recipe.parts[1]
    if command in ("embed", "qa-synth", "experiment"):  # argparse commands: keys must be their options
        from qanchor_pl.cli import RECIPE_PARSERS, _parser, apply_recipe

        _parser()
        parser = RECIPE_PARSERS[command]
        apply_recipe(parser, str(ROOT / recipe))
        if command != "embed":  # typed configs: every recipe value has its field's type
            import dataclasses

            from data_modules.qa_synth import QASynthConfig
            from qanchor_pl.pipelines.experiment import ExperimentConfig

            cls = {"qa-synth": QASynthConfig, "experiment": ExperimentConfig}[command]
            for f in dataclasses.fields(cls):
                value = parser.get_default(f.name)
                if value is not None and f.name != "timings":
                    assert type(value).__name__ in f.type.replace("|", " ").split(), (recipe, f.name, value)
        return
    assert command in RECIPE_COMMANDS, (
        f"{recipe}: recipes live in recipes/<pretrain|tune|embed|qa-synth|experiment>/"
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        getattr(lightning_cli, RECIPE_COMMANDS[command])(["--config", str(ROOT / recipe), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "model:" in out.getvalue() and "data:" in out.getvalue()


def test_a_run_logs_checkpoints_refuses_to_mix_and_resumes_into_the_same_curve(built, tmp_path):
    run = tmp_path / "run"
    run_qanchor(*pretrain_args(built, run, 6, "--checkpoint.every_n_train_steps", "3"))
    tb = run / "tensorboard"
    assert [p.name for p in tb.iterdir()] == ["run"]
    tags = scalars(tb / "run")
    for tag in ["train/loss", "train/loss_cl", "train/loss_ntp", "train/lr", "train/temperature",
                "train/grad_norm", "train/pos_sim", "train/neg_sim", "train/masked_fraction",
                "throughput/samples_per_sec", "throughput/tokens_per_sec", "train/answer_truncated_frac"]:  # fmt: skip
        assert tag in tags, f"{tag} not logged; have {sorted(tags)}"
    assert [s for s, _ in tags["train/loss"]] == list(range(6))
    assert all(v > 0 for _, v in tags["throughput/tokens_per_sec"])

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["qanchor"]["trainable_only"]
    assert "loops" in ckpt and ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    keys = set(ckpt["state_dict"])
    assert "model.special.weight" in keys and any(k.startswith("model.user_encoder.") for k in keys)

    again = run_qanchor(*pretrain_args(built, run, 6), check=False)
    assert again.returncode != 0 and "--ckpt_path last" in again.stderr + again.stdout

    run_qanchor(*pretrain_args(built, run, 9, "--ckpt_path", "last"))
    assert [p.name for p in tb.iterdir()] == ["run"]
    steps = sorted({s for s, _ in scalars(tb / "run")["train/loss"]})
    assert steps == list(range(9)), steps


def test_lora_checkpoints_hold_only_trainable_weights(built, tmp_path):
    run = tmp_path / "run"
    run_qanchor(*pretrain_args(built, run, 2, *LORA))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert any("lora_A" in k for k in keys) and "model.special.weight" in keys
    assert not any("base_layer" in k or "embed_tokens" in k for k in keys)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def _audit(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples-rank0.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume_ends_with_the_same_weights(built, tmp_path):
    steps, kill_after = 14, 6
    every = ["--checkpoint.every_n_train_steps", "1", *LORA, "--data.num_workers", "1"]
    run_qanchor(*pretrain_args(built, tmp_path / "full", steps, *every))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "qanchor_pl.cli", *pretrain_args(built, killed, steps, *every)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    audit = killed / "samples-rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if audit.exists() and len(audit.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < stopped_at < steps  # killed mid-run (the audit line of a step precedes its checkpoint)

    run_qanchor(*pretrain_args(built, killed, steps, *every, "--ckpt_path", "last"))
    full, resumed = _final_weights(tmp_path / "full"), _final_weights(killed)
    assert full.keys() == resumed.keys()
    worst = max(float((full[k] - resumed[k]).abs().max()) for k in full)
    assert worst <= 1e-6, f"max abs weight difference {worst}"
    assert _audit(killed) == _audit(tmp_path / "full")  # the same users at every step


@pytest.mark.slow
def test_two_process_cpu_ddp_through_the_cli(built, tmp_path):
    run = tmp_path / "run"
    run_qanchor(*pretrain_args(built, run, 3, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                               "--sample_audit.ids", "true"))  # fmt: skip
    ranks = [
        [json.loads(x) for x in (run / f"samples-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    ]
    assert [len(r) for r in ranks] == [3, 3]
    users = [set(u for row in r for u in row["users"]) for r in ranks]
    assert users[0] and users[1] and not users[0] & users[1]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    # 2 x 16 users per step: the logged global sample count covers both ranks
    assert scalars(run / "tensorboard" / "run")["train/loss"][-1][0] == 2


def test_bench_train_reports_lightning_and_plain_loop_rates(built):
    proc = run_qanchor("bench", "train", "--config", RECIPE, "--steps", "3", "--warmup", "1", "--json",
                       "--data.data", str(built), *SMALL)  # fmt: skip
    report = json.loads(proc.stdout)
    for side in ("lightning", "plain_pytorch"):
        assert report[side]["steps"] == 3
        assert report[side]["samples_per_s"] > 0 and report[side]["tokens_per_s"] > 0
    assert report["trainable_params"] == report["total_params"] > 0  # lora: null trains everything
    assert isinstance(report["lightning_overhead_pct"], float)


def test_make_backbone_writes_a_loadable_model_of_a_published_shape(built, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from qanchor_pl.model import backbone as bb

    small = dict(bb.QWEN25_SHAPES["qwen2.5-0.5b"], hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=2048)  # fmt: skip
    monkeypatch.setitem(bb.QWEN25_SHAPES, "small-test", small)  # the real 0.5B is 2 GB to write
    report = bb.write_shaped_backbone("small-test", str(built), tmp_path / "lm")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert sum(p.numel() for p in lm.parameters()) == report["params"]
    assert lm.config.num_key_value_heads == 2 and (tmp_path / "lm" / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="unknown shape"):
        bb.write_shaped_backbone("qwen9", str(built), tmp_path / "other")
