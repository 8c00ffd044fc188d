"""Learned special-token embeddings: ``<USER_EMB>`` and the structural markers.

They live in their own small table instead of being appended to the backbone's vocabulary: the
model is fed through ``inputs_embeds`` anyway, so no token id is needed, the rows stay trainable
when LoRA freezes the backbone (the authors' code left them frozen), and a checkpoint stores
a few rows rather than a resized 150k-row embedding matrix.
"""

from __future__ import annotations

import torch
from torch import nn

USER_EMB = "<USER_EMB>"
USER_MARKER = "<USER>"


def modality_markers(name: str) -> tuple[str, str]:
    return f"<{name}>", f"</{name}>"


class SpecialTokens(nn.Module):
    """A named table of trainable token embeddings, drawn like the backbone's own rows.

    Rows are drawn per dimension from the mean and standard deviation of ``table`` (the backbone's
    token embeddings) when given, so a new token starts at the scale the backbone was trained on
    (a fixed 0.02 was ~4x too small for the tiny backbone, whose table has std ~0.088); without a
    table, N(0, ``init_std``).
    """

    def __init__(
        self, names: list[str], hidden_size: int, init_std: float = 0.02, table: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate special token names: {names}")
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(names)}
        noise = torch.randn(len(names), hidden_size)
        # A ZeRO-3 partitioned table is empty on this rank: fall back to the fixed scale there.
        if table is None or table.dim() != 2 or table.shape[0] < 2 or table.shape[1] != hidden_size:
            weight = noise * init_std
        else:
            rows = table.detach().float().cpu()
            weight = rows.mean(0) + noise * rows.std(0)
        self.weight = nn.Parameter(weight)

    def forward(self, name: str, batch_size: int) -> torch.Tensor:
        """``name``'s embedding repeated for a batch: [B, 1, H]."""
        return self.weight[self.index[name]].expand(batch_size, 1, -1)
