"""A fixed random contrastive case shared by the single- and multi-process loss tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IN_DIM, EMB_DIM = 12, 8


class Towers(nn.Module):
    """Two linear towers producing L2-normalised u and v."""

    def __init__(self) -> None:
        super().__init__()
        self.fu = nn.Linear(IN_DIM, EMB_DIM)
        self.fv = nn.Linear(IN_DIM, EMB_DIM)

    def forward(self, x_u: torch.Tensor, x_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.fu(x_u), dim=-1), F.normalize(self.fv(x_v), dim=-1)


def make_case(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x_u = torch.randn(n, IN_DIM, generator=g)
    x_v = x_u + 0.8 * torch.randn(n, IN_DIM, generator=g)  # answers related to their users
    return x_u, x_v


def make_towers() -> Towers:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        return Towers()
