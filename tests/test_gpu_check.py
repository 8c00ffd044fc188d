"""``make gpu-check`` (``qanchor bench gpu``): the prepared GPU script, dry-run on the CPU at toy
sizes, so that the one lent GPU session runs a script that is known to work."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_qanchor


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_on_the_cpu_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu-check"
    proc = run_qanchor("bench", "gpu", "--dry_run", "--out", str(out), timeout=1800)
    report = json.loads((out / "gpu-check.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True and report["ok"] is True
    sections = report["sections"]
    assert list(sections) == ["prepare", "train", "grad_cache", "kv_cache", "qa_synth", "pytest_gpu"]
    train = sections["train"]["result"]
    assert train["lightning"]["samples_per_s"] > 0 and train["plain_pytorch"]["samples_per_s"] > 0
    kv = sections["kv_cache"]["result"]
    assert kv["device"] == "cpu" and kv["max_abs_diff"] < 1e-4 and kv["ideal_speedup"] > 1
    assert sections["qa_synth"]["result"]["prompts_per_s"] > 0
    assert "skipped" in sections["pytest_gpu"]["summary"]  # no CUDA here: the GPU tests are skipped
    cached = sections["grad_cache"]["result"]["grad_cache"]
    assert sections["grad_cache"]["ok"] and cached["chunk_size"] == 8 and cached["samples_per_s"] > 0
