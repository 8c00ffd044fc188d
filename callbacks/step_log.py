"""A plain-text progress line every N steps on rank 0, so SLURM log files show progress.

Progress bars do not belong in log files (recipes for clusters turn them off); this line does:
``step 120/50000 loss 3.2104 contrastive 2.1003 ntp 1.1101 lr 1.00e-04 samples/s 812.3``.
"""

from __future__ import annotations

import sys

import lightning as L


class StepLog(L.Callback):
    """Prints ``step S/MAX`` with every ``train/*`` loss part, the learning rate and samples/s.

    Args:
        every_n_steps: steps between lines; 0 turns the log off.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or not trainer.is_global_zero:
            return
        print(self.line(trainer), file=sys.stderr, flush=True)

    @staticmethod
    def line(trainer: L.Trainer) -> str:
        metrics = trainer.callback_metrics
        parts = [f"step {trainer.global_step}/{trainer.max_steps}"]
        for key in sorted(k for k in metrics if k.startswith("train/") and "loss" in k):
            parts.append(f"{key.removeprefix('train/')} {float(metrics[key]):.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        if "throughput/samples_per_sec" in metrics:
            parts.append(f"samples/s {float(metrics['throughput/samples_per_sec']):.1f}")
        return " ".join(parts)
