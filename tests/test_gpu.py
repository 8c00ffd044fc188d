"""GPU-only checks (skipped without CUDA): a bf16 pretraining step of a Qwen2.5-0.5B-shaped model
at the paper's shapes (~1,000 tokens per user, 32 users), measured by `qanchor bench train`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_qanchor


@pytest.mark.gpu
def test_bf16_step_of_the_0_5b_shape_at_paper_lengths(tmp_path):
    raw, data, backbone = tmp_path / "raw", tmp_path / "data", tmp_path / "qwen2.5-0.5b-random"
    run_qanchor("synth", "--out", str(raw), "--users", "1024", "--activity", "4")  # fills the paper's caps
    run_qanchor("build", "--raw", str(raw), "--out", str(data), "--max-events", "paper")
    run_qanchor("encode", "--data", str(data), "--encoder", "hash", "--dim", "768")  # gte-base's width
    run_qanchor("make-backbone", "--shape", "qwen2.5-0.5b", "--tokenizer", str(data), "--out", str(backbone))
    overrides = {"model.arch.backbone": str(backbone), "data.data": str(data), "data.num_workers": 2}
    proc = run_qanchor("bench", "train", "--recipe", "[pretrain/qwen0.5b-1gpu]", "--overrides", json.dumps(overrides),
                       "--steps", "10", "--warmup", "3", "--blocks", "2")  # fmt: skip
    report = json.loads(proc.stdout)
    print(json.dumps(report, indent=2))  # the figures for the README
    assert report["precision"] == "bf16-mixed" and report["device"].startswith("cuda")
    assert report["lightning"]["tokens_per_s"] > 0 and report["peak_memory_gib"] > 0
