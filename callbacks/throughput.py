"""Samples/s, tokens/s and (on GPUs) model FLOPs utilisation, logged every few steps.

The LightningModule publishes the GLOBAL (all-rank) counts of its last step in
``pl_module.step_counts`` (``samples``, ``tokens``); Lightning's own ThroughputMonitor reads sizes
from ``batch``, which a ``dataloader_iter`` training step does not hand to callbacks.
"""

from __future__ import annotations

import time

import lightning as L
import torch


class ThroughputLogger(L.Callback):
    """Logs ``throughput/samples_per_sec``, ``throughput/tokens_per_sec`` and, when the peak FLOP/s
    of the device is known (``peak_tflops``, or looked up for CUDA devices), ``throughput/mfu``.

    Args:
        window: steps per measurement (the first window after (re)start includes warm-up).
        peak_tflops: peak dense TFLOP/s of ONE device at the training precision; None = look up.
    """

    def __init__(self, window: int = 10, peak_tflops: float | None = None) -> None:
        self.window = window
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._samples = 0.0
        self._tokens = 0.0
        self._steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_tflops is None and pl_module.device.type == "cuda":
            from lightning.fabric.utilities.throughput import get_available_flops

            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            flops = get_available_flops(pl_module.device, dtype)
            self.peak_tflops = flops / 1e12 if flops else None
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        counts = getattr(pl_module, "step_counts", None) or {}
        self._samples += counts.get("samples", 0.0)
        self._tokens += counts.get("tokens", 0.0)
        self._steps += 1
        if self._steps < self.window:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        seconds = max(now - self._t0, 1e-9)
        metrics = {"throughput/samples_per_sec": self._samples / seconds}
        if self._tokens > 0:  # modules that count tokens
            metrics["throughput/tokens_per_sec"] = self._tokens / seconds
        flops_per_token = getattr(getattr(pl_module, "model", None), "flops_per_token", None)
        if self.peak_tflops and callable(flops_per_token) and self._tokens > 0:
            achieved = metrics["throughput/tokens_per_sec"] * flops_per_token()
            metrics["throughput/mfu"] = achieved / (self.peak_tflops * 1e12 * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self._t0, self._samples, self._tokens, self._steps = now, 0.0, 0.0, 0
