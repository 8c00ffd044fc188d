"""AdamW with decoupled weight decay groups, and a linear-warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices decay; biases, norms, 0-d scalars and the
    special-token rows do not (decaying them only drags them towards zero)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "special" in name or "norm" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear 1/warmup .. 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: Any, optimizer_init: dict | None, **adamw: Any) -> torch.optim.Optimizer:
    """AdamW(**adamw), or the optimizer a recipe names (``--optimizer``: {class_path, init_args})."""
    if optimizer_init:
        from lightning.pytorch.cli import instantiate_class

        return instantiate_class(params, optimizer_init)
    return torch.optim.AdamW(params, **adamw)


def warmup_cosine_schedule(
    opt: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule every run keeps, whichever optimizer it uses."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: warmup_cosine(
            s, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_lr_ratio
        ),
    )


def build_optimizer(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    optimizer_init: dict | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = make_optimizer(param_groups(module, weight_decay), optimizer_init, lr=lr, betas=betas)
    sched = warmup_cosine_schedule(
        opt, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return opt, sched
