"""`qanchor pretrain` end to end: recipes, TensorBoard, checkpoints, exact resume after SIGKILL, DDP."""

from __future__ import annotations

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
    small = {SMALL[i].removeprefix("--"): SMALL[i + 1] for i in range(0, len(SMALL), 2)}
    # 300 users in batches of 64: 5 batches an epoch, so 2 blocks x 7 steps cycle epochs
    overrides = json.dumps({**small, "data.data": str(built), "data.batch_size": 64})
    proc = run_qanchor("bench", "train", "--recipe", f"[{RECIPE}]", "--overrides", overrides,
                       "--steps", "3", "--warmup", "3", "--blocks", "2", "--grad_cache", "16", "--json")  # fmt: skip
    report = json.loads(proc.stdout)
    cached = report["grad_cache"]  # the third side: batches of 64 through the backbone 16 at a time
    assert cached["chunk_size"] == 16 and cached["blocks"] == 2 and cached["samples_per_s"] > 0
    assert cached["peak_rss_gib"] > 0 and report["lightning"]["peak_rss_gib"] > 0
    for side in ("lightning", "plain_pytorch"):
        assert report[side]["steps"] == 3 and report[side]["blocks"] == 2
        assert report[side]["samples_per_s"] > 0 and report[side]["tokens_per_s"] > 0
        assert 0 < report[side]["padding_fraction"] < 1
        assert (
            report[side]["samples_per_s_min"]
            <= report[side]["samples_per_s"]
            <= report[side]["samples_per_s_max"]
        )
    assert len(report["lightning_overhead_pct_per_block"]) == 2
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
