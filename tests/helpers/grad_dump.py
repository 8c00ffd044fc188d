"""A callback for tests: saves the gradients of the first optimizer step (before clipping),
one file per rank, then stops caring."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class GradDump(L.Callback):
    """Writes ``out/grads-rank{R}.pt``: {parameter name: gradient} at the first optimizer step."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step != 0:
            return
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(grads, self.out / f"grads-rank{trainer.global_rank}.pt")
