"""``qanchor bench train``: one recipe's training step under Lightning and in a plain PyTorch loop.

Both sides build the same module and data from the same recipe and run the same number of steps;
only steps after a warm-up are timed. The difference is what Lightning (loop, hooks, logging,
callbacks) costs per step. On a busy machine one pair of runs says little (three single runs gave
-6.1 %, +1.0 % and +7.4 %): the sides alternate in blocks (plain, Lightning, plain, ...) and the
report gives medians and the spread. Small data sets cycle epochs.

``--grad_cache N`` adds a third side, the Lightning step with ``model.grad_cache.chunk_size N``,
in the same alternation: samples/s and peak memory with and without the gradient cache (on CUDA
the allocator's peak; on the CPU the resident set of the process and its loader workers).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from data_modules.util.memory import PeakRSS
from qanchor_pl.config import BenchTrainConfig
from qanchor_pl.model.config import DataInputs


class StepTimer(L.Callback):
    """Wall-clock time at the end of every training step, plus the module's step counts."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.counts: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.counts.append(dict(pl_module.step_counts))


def _rates(times: list[float], counts: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """Rates over steps warmup+1 .. end (the step ending at times[warmup] starts the clock)."""
    seconds = times[-1] - times[warmup]
    steps = len(times) - 1 - warmup
    samples = sum(c["samples"] for c in counts[warmup + 1 :])
    tokens = sum(c["tokens"] for c in counts[warmup + 1 :])
    slots = sum(c.get("slots", 0.0) for c in counts[warmup + 1 :])
    return {
        "padding_fraction": round(1.0 - tokens / slots, 4) if slots else None,
        "steps": steps,
        "seconds": round(seconds, 3),
        "sec_per_step": round(seconds / steps, 4),
        "samples_per_s": round(samples / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


class PeakMemory:
    """Peak memory over a block: CUDA's allocator peak on a GPU, else the resident set of this
    process and its loader workers (sampled, :class:`~data_modules.util.memory.PeakRSS`)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.peak = cuda, 0
        self._rss = None if cuda else PeakRSS(every=0.005)

    def __enter__(self) -> PeakMemory:
        if self._rss is None:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._rss.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rss is None:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._rss.__exit__(*exc)
            self.peak = self._rss.peak

    def report(self) -> dict[str, float | None]:
        key = "peak_memory_gib" if self.cuda else "peak_rss_gib"
        return {key: round(self.peak / 2**30, 3) if self.peak else None}


def _lightning(args: list[str], steps: int, warmup: int, run_dir: str) -> tuple[dict[str, Any], Any]:
    """One Lightning block: a fresh fit of warmup + steps + 1 steps (epochs cycle as needed)."""
    from qanchor_pl.train.lightning_cli import build_pretrain_cli

    timer = StepTimer()
    cli = build_pretrain_cli(
        [*args, "--run_dir", run_dir, "--trainer.max_steps", str(steps + warmup + 1),
         "--checkpoint.every_n_train_steps", str(10**9), "--trainer.enable_progress_bar", "false"],
        extra_callbacks=[timer],
    )  # fmt: skip
    with PeakMemory(cuda=cli.trainer.strategy.root_device.type == "cuda") as memory:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {**_rates(timer.times, timer.counts, warmup), **memory.report()}, cli


def endless(dataset: Any) -> Iterator[Any]:
    """Epoch after epoch of a re-iterable data set (a small set runs out before the steps do)."""
    while True:
        empty = True
        for batch in dataset:
            empty = False
            yield batch
        if empty:
            raise ValueError("the data set yields no batch")


def _plain(cli: Any, steps: int, warmup: int) -> dict[str, Any]:
    """The same step without Lightning: forward, backward, clip, AdamW, scheduler."""
    from qanchor_pl.train.optim import build_optimizer
    from qanchor_pl.train.pretrain import PretrainModule

    L.seed_everything(cli.config.get("seed_everything") or 0, verbose=False)
    hp = dict(cli.model.hparams)
    module = PretrainModule(**{k: v for k, v in hp.items() if k != "inputs" and not k.startswith("_")})
    dm = cli.datamodule
    module._build(DataInputs(**dm.model_inputs()))
    device = cli.model.device
    module.to(device).train()
    opt, sched = build_optimizer(
        module, lr=hp["lr"], weight_decay=hp["weight_decay"], betas=tuple(hp["betas"]),
        warmup_steps=hp["warmup_steps"], total_steps=steps + warmup + 1, min_lr_ratio=hp["min_lr_ratio"],
    )  # fmt: skip
    clip = cli.trainer.gradient_clip_val
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in str(cli.trainer.precision))
    times, counts = [], []
    loader = endless(dm.make_dataset())
    for _ in range(steps + warmup + 1):
        batch = next(loader)
        batch = cli.trainer.strategy.batch_to_device(batch, device)
        with autocast:
            loss, _, step_counts = module.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        counts.append(step_counts)
    return _rates(times, counts, warmup)


def _summary(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over blocks, with the spread (min, max) of samples/s (and the largest peak memory)."""
    rates = [b["samples_per_s"] for b in blocks]
    memory = {k: max(b[k] for b in blocks) for k in ("peak_memory_gib", "peak_rss_gib")
              if all(b.get(k) is not None for b in blocks)}  # fmt: skip
    return {
        **memory,
        "steps": blocks[0]["steps"],
        "blocks": len(blocks),
        "sec_per_step": round(statistics.median(b["sec_per_step"] for b in blocks), 4),
        "samples_per_s": round(statistics.median(rates), 2),
        "samples_per_s_min": min(rates),
        "samples_per_s_max": max(rates),
        "tokens_per_s": round(statistics.median(b["tokens_per_s"] for b in blocks), 1),
        "padding_fraction": round(statistics.median(b["padding_fraction"] or 0.0 for b in blocks), 4),
    }


def bench_train(cfg: BenchTrainConfig) -> dict[str, Any]:
    """Benchmark the recipe(s) with overrides; returns the JSON report."""
    from qanchor_pl.train.lightning_cli import recipe_args

    if cfg.blocks < 1 or cfg.steps < 1:
        raise ValueError(f"bench train: blocks and steps must be >= 1, got {cfg.blocks} and {cfg.steps}")
    args = recipe_args(cfg.recipe, cfg.overrides)
    if cfg.grad_cache is not None and cfg.grad_cache < 1:
        raise ValueError(f"bench train: --grad_cache must be a chunk size >= 1, got {cfg.grad_cache}")
    cached_args = [*args, "--model.grad_cache.chunk_size", str(cfg.grad_cache)] if cfg.grad_cache else None
    lit_blocks, plain_blocks, cached_blocks = [], [], []
    with tempfile.TemporaryDirectory(prefix="qanchor-bench-") as tmp:
        for block in range(cfg.blocks):
            run_dir = str(Path(tmp) / f"block{block}")
            lit, cli = _lightning(args, cfg.steps, cfg.warmup, run_dir)
            plain_blocks.append(_plain(cli, cfg.steps, cfg.warmup))
            lit_blocks.append(lit)
            if cached_args:
                cached_blocks.append(_lightning(cached_args, cfg.steps, cfg.warmup, run_dir + "-cached")[0])
    pairs = [100.0 * (p["samples_per_s"] - q["samples_per_s"]) / p["samples_per_s"]
             for p, q in zip(plain_blocks, lit_blocks)]  # fmt: skip
    lit, plain = _summary(lit_blocks), _summary(plain_blocks)
    model = cli.model.model
    flops = _utilisation(model, cli, lit["tokens_per_s"])
    return {
        "bench": "train",
        "recipe": cfg.recipe,
        "overrides": cfg.overrides,
        "device": str(cli.model.device),
        "precision": str(cli.trainer.precision),
        "threads": torch.get_num_threads(),
        "cpu": platform.machine(),
        "cpus": os.cpu_count(),
        "batch_size": cli.datamodule.hparams.batch_size,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "lightning": lit,
        "plain_pytorch": plain,
        "lightning_overhead_pct": round(statistics.median(pairs), 2),
        "lightning_overhead_pct_per_block": [round(x, 2) for x in pairs],
        **flops,
        **_grad_cache_report(cfg.grad_cache, cached_blocks, lit),
    }


def _grad_cache_report(
    chunk: int | None, blocks: list[dict[str, Any]], lit: dict[str, Any]
) -> dict[str, Any]:
    """The gradient cache's side against the plain Lightning step (same blocks, alternated)."""
    if not chunk:
        return {}
    cached = _summary(blocks)
    out = {"chunk_size": chunk, **cached,
           "samples_per_s_change_pct": round(100.0 * (cached["samples_per_s"] / lit["samples_per_s"] - 1), 1)}  # fmt: skip
    for key in ("peak_memory_gib", "peak_rss_gib"):
        if cached.get(key) and lit.get(key):
            out[f"{key}_ratio"] = round(cached[key] / lit[key], 3)
    return {"grad_cache": out}


def _utilisation(model: Any, cli: Any, tokens_per_s: float) -> dict[str, Any]:
    """Model FLOP/s (6 x non-embedding parameters per token) and, on CUDA, MFU and peak memory."""
    achieved = tokens_per_s * model.flops_per_token()
    out: dict[str, Any] = {"model_tflops_per_s": round(achieved / 1e12, 4)}
    device = cli.model.device
    if device.type == "cuda":
        from lightning.fabric.utilities.throughput import get_available_flops

        dtype = torch.bfloat16 if "bf16" in str(cli.trainer.precision) else torch.float32
        peak = get_available_flops(device, dtype)
        out["gpu"] = torch.cuda.get_device_name(device)
        out["mfu"] = round(achieved / peak, 4) if peak else None
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out
