"""The model's own category list per event modality, and the count features built on it.

Batches carry each event's category as a name-derived key (``data_modules.loading.collate.
category_key``); this module maps keys to the model's indices, so data cut at another time (whose
categories may differ) lines up by name. The count vector is what the category-count baseline
reads: per modality, log(1 + events) of each category, then log(1 + all events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from data_modules.loading.collate import category_key


class CategoryIndex(nn.Module):
    """Category keys -> indices per modality; index ``len(categories[m])`` is "none or unknown".

    Args:
        categories: event modality -> the model's category names, in their fixed order.
    """

    def __init__(self, categories: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.names = {m: tuple(c) for m, c in categories.items()}
        for m, names in self.names.items():
            keys = torch.tensor([category_key(n) for n in names], dtype=torch.int64)
            sorted_keys, order = keys.sort()
            # derived from the config, not state: checkpoints stay as they were
            self.register_buffer(f"keys_{m}", sorted_keys, persistent=False)
            self.register_buffer(f"order_{m}", order, persistent=False)

    def size(self, modality: str) -> int:
        """Categories of ``modality`` (without the "none or unknown" slot)."""
        return len(self.names.get(modality, ()))

    def index(self, modality: str, keys: torch.Tensor) -> torch.Tensor:
        """[...] category keys -> [...] indices in 0..size (size = none or unknown)."""
        n = self.size(modality)
        if n == 0:
            return torch.zeros_like(keys)
        table, order = getattr(self, f"keys_{modality}"), getattr(self, f"order_{modality}")
        pos = torch.searchsorted(table, keys).clamp(max=n - 1)
        return torch.where(table[pos] == keys, order[pos], torch.full_like(pos, n))

    def counts(self, modality: str, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, K] keys and mask -> [B, size + 1]: events per category, then all events."""
        n = self.size(modality)
        idx = self.index(modality, keys)
        w = mask.to(torch.float32)
        per = torch.zeros(keys.shape[0], n + 1, dtype=torch.float32, device=keys.device)
        per.scatter_add_(1, idx, w)
        per[:, n] = w.sum(1)  # the total includes events without a known category
        return per

    def width(self, modalities: Sequence[str]) -> int:
        """Length of :meth:`log_count_vector` over ``modalities``."""
        return sum(self.size(m) + 1 for m in modalities)

    def log_count_vector(
        self, modalities: Sequence[str], keys: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """[B, width]: log(1 + count) per (modality, category) and per modality, modalities in order."""
        return torch.log1p(torch.cat([self.counts(m, keys[m], masks[m]) for m in modalities], 1))
