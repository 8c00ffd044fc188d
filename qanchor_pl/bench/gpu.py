"""``qanchor bench gpu`` (``make gpu-check``): the one prepared check for a lent GPU.

On a machine with one CUDA GPU and no network, in under 8 minutes, one JSON file
(``OUT/gpu-check.json``, rewritten after every section so a cut-off run keeps what it measured):

- ``train``: a pretraining step of the Qwen2.5-0.5B-shaped random backbone (``make-backbone``) in
  bf16 with LoRA at the paper's caps, Lightning against a plain loop (samples/s, tokens/s, MFU,
  peak memory: ``qanchor bench train``);
- ``grad_cache``: the same step with the gradient cache, when the model has one;
- ``kv_cache``: multi-scenario embedding with and without the prefix cache at the paper's
  ~680-token prefix and 21-token suffix, against the ideal speed-up (``qanchor bench kv-cache``);
- ``qa_synth``: LLM answer prompts/s at batch 64 (``qanchor bench qa-synth``);
- ``pytest_gpu``: ``pytest -m gpu``.

Every section runs as its own ``qanchor`` process with its own time limit: one that fails or
runs out of time is recorded (its exit code and last lines) and the next one runs.
``--dry_run true`` runs the same script on the CPU at toy sizes: the suite's check of the script.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from data_modules.util.atomic import write_json
from qanchor_pl.config import BenchGPUConfig


def _sizes(cfg: BenchGPUConfig) -> dict[str, Any]:
    if cfg.dry_run:
        return {"users": 48, "activity": "1", "caps": "bill=8,mini=4,spm=4,app=4,search=2", "dim": "32",
                "shape": "tiny", "recipe": "pretrain/tiny-cpu", "steps": "2", "warmup": "1", "blocks": "1",
                "device": "cpu", "dtype": "float32", "kv": ["--hidden", "64", "--layers", "2", "--intermediate", "128",
                                                          "--users", "2", "--scenarios", "3", "--repeats", "1"],
                "qa": ["--users", "4", "--batch_size", "4", "--max_new_tokens", "8", "--device", "cpu"],
                "limit": 600}  # fmt: skip
    return {"users": cfg.users, "activity": "4", "caps": "paper", "dim": "768", "shape": "qwen2.5-0.5b",
            "recipe": "pretrain/qwen0.5b-1gpu", "steps": str(cfg.steps), "warmup": "3", "blocks": "2",
            "device": "cuda", "dtype": "bfloat16",
            "kv": ["--hidden", "896", "--layers", "24", "--heads", "14", "--kv_heads", "2", "--intermediate", "4864",
                   "--users", "8", "--scenarios", "10", "--query_len", "20", "--repeats", "3"],
            "qa": ["--users", "128", "--batch_size", "64", "--max_new_tokens", "64", "--device", "cuda"],
            "limit": 150}  # fmt: skip


def _qanchor(*args: str, timeout: float) -> dict[str, Any]:
    """One ``qanchor`` process: its JSON result, or what went wrong."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "qanchor_pl.cli", "--json", *args], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "error": f"over its {timeout:.0f} s limit",
            "seconds": round(time.perf_counter() - t0, 1),
        }
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        return {"ok": False, "rc": proc.returncode, "error": " | ".join(tail), "seconds": seconds}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    return {"ok": True, "result": json.loads(lines[-1]) if lines else None, "seconds": seconds}


def bench_gpu(cfg: BenchGPUConfig) -> dict[str, Any]:
    """Run every section (see the module docstring); returns the report written to OUT/gpu-check.json."""
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    size = _sizes(cfg)
    if not cfg.dry_run and not torch.cuda.is_available():
        raise ValueError("bench gpu needs a CUDA GPU (use --dry_run true to check the script on the CPU)")
    report: dict[str, Any] = {"dry_run": cfg.dry_run, "device": torch.cuda.get_device_name(0) if not cfg.dry_run
                              else "cpu", "torch": torch.__version__, "sections": {}}  # fmt: skip
    path = out / "gpu-check.json"

    def section(name: str, result: dict[str, Any]) -> dict[str, Any]:
        report["sections"][name] = result
        write_json(path, report)
        return result

    raw, data, backbone = out / "raw", out / "data", out / f"backbone-{size['shape']}"
    limit = size["limit"]
    prep = [
        _qanchor("synth", "--out", str(raw), "--users", str(size["users"]), "--activity", size["activity"], timeout=limit),
        _qanchor("build", "--raw", str(raw), "--out", str(data), "--max_events", size["caps"], "--min_class_users", "0",
                 timeout=limit),
        _qanchor("encode", "--data", str(data), "--encoder", "hash", "--dim", size["dim"], timeout=limit),
        _qanchor("make-backbone", "--shape", size["shape"], "--tokenizer", str(data), "--out", str(backbone),
                 timeout=limit),
    ]  # fmt: skip
    if not section("prepare", {"ok": all(p["ok"] for p in prep), "steps": prep})["ok"]:
        report["ok"] = False
        write_json(path, report)
        return report
    overrides = {"model.arch.backbone": str(backbone), "data.data": str(data), "data.num_workers": 2}
    if cfg.dry_run:
        overrides["data.num_workers"] = 0
    train_args = ["bench", "train", "--recipe", f"[{size['recipe']}]", "--steps", size["steps"], "--warmup",
                  size["warmup"], "--blocks", size["blocks"]]  # fmt: skip
    section("train", _qanchor(*train_args, "--overrides", json.dumps(overrides), timeout=limit))
    section("grad_cache", _grad_cache(train_args, overrides, limit))
    section("kv_cache", _qanchor("bench", "kv-cache", *size["kv"], "--device", size["device"], "--dtype",
                                 size["dtype"], timeout=limit))  # fmt: skip
    section("qa_synth", _qanchor("bench", "qa-synth", "--data", str(data), "--model", str(backbone), *size["qa"],
                                 timeout=limit))  # fmt: skip
    section("pytest_gpu", _pytest_gpu(limit * 2))
    report["ok"] = all(s.get("ok", False) or s.get("skipped") for s in report["sections"].values())
    write_json(path, report)
    return report


def _grad_cache(train_args: list[str], overrides: dict, limit: float) -> dict[str, Any]:
    """The training step with and without the gradient cache (chunks of 8 of the batch's 32)."""
    return _qanchor(*train_args, "--blocks", "1", "--grad_cache", "8", "--overrides", json.dumps(overrides),
                    timeout=limit)  # fmt: skip


def _pytest_gpu(limit: float) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               str(root / "tests")], capture_output=True, text=True, timeout=limit, cwd=root)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"over its {limit:.0f} s limit"}
    summary = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:]
    return {"ok": proc.returncode in (0, 5), "rc": proc.returncode, "summary": summary[0] if summary else "",
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
