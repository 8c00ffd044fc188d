"""The projection head shared by the anchor and semantic towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Linear -> ReLU -> Linear to ``embed_dim``, then L2 normalisation (the authors' 896->512->128)."""

    def __init__(self, hidden_size: int, head_hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, head_hidden), nn.ReLU(), nn.Linear(head_hidden, embed_dim)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(hidden).float(), dim=-1)
