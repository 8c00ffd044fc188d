"""Assembling ragged input sequences from pieces, with no per-user Python loop.

A sequence is a list of :class:`Piece` s laid side by side ([B, L_k, H] each, with a validity
mask). :func:`pack` concatenates them and moves every user's valid slots to the left, in order
(a stable sort of the validity mask), so each user's sequence is contiguous and right-padded:
positions 0..n-1 are exactly what the same user would get alone, independent of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class Role(IntEnum):
    """What a packed slot holds."""

    PAD = 0
    PREFIX = 1  # user, modality, event and structural tokens
    PROMPT = 2  # soft prompt vectors (prompt tuning)
    QUERY = 3
    USER_EMB = 4
    ANSWER = 5


@dataclass
class Piece:
    embeds: torch.Tensor  # [B, L, H]
    valid: torch.Tensor  # [B, L] bool
    role: Role
    token_ids: torch.Tensor | None = None  # [B, L] for text pieces (NTP targets)
    label: str = ""  # the input group it belongs to (a modality, user, counts...): attention analysis


@dataclass
class Packed:
    embeds: torch.Tensor  # [B, T, H], right-padded
    attention_mask: torch.Tensor  # [B, T] long (1 = real token)
    role: torch.Tensor  # [B, T] long (Role values; PAD on padding)
    token_ids: torch.Tensor  # [B, T] long (-100 where the slot is not text)

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)

    def position_of(self, role: Role) -> torch.Tensor:
        """Per user, the index of the (single) slot with ``role``: [B]."""
        hits = self.role == int(role)
        if not bool(hits.any(1).all()):
            raise ValueError(f"some sequences have no {role.name} slot")
        return hits.to(torch.int8).argmax(1)


def text_piece(embedding: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, role: Role) -> Piece:
    return Piece(embedding(ids), mask.bool(), role, ids)


def pack(pieces: list[Piece]) -> Packed:
    """Concatenate ``pieces`` and left-align each row's valid slots (see module docstring)."""
    batch, _, hidden = pieces[0].embeds.shape
    device = pieces[0].embeds.device
    embeds = torch.cat([p.embeds for p in pieces], dim=1)
    valid = torch.cat([p.valid for p in pieces], dim=1)
    role = torch.cat([torch.full_like(p.valid, int(p.role), dtype=torch.long) for p in pieces], dim=1)
    ids = torch.cat(
        [
            p.token_ids.long()
            if p.token_ids is not None
            else torch.full(p.valid.shape, -100, dtype=torch.long, device=device)
            for p in pieces
        ],
        dim=1,
    )
    order, keep = _left_aligned(valid)
    width = order.shape[1]
    embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand(batch, width, hidden))
    role = torch.where(keep, torch.gather(role, 1, order), int(Role.PAD))
    ids = torch.where(keep, torch.gather(ids, 1, order), -100)
    return Packed(embeds=embeds, attention_mask=keep.long(), role=role, token_ids=ids)


def _left_aligned(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, keep): the slot each packed position takes, and whether it is real (see :func:`pack`)."""
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    width = max(int(valid.sum(1).max()), 1)
    order = order[:, :width]
    return order, torch.gather(valid, 1, order)


def pack_labels(pieces: list[Piece], names: list[str]) -> torch.Tensor:
    """Each packed slot's group: the index of its piece's ``label`` in ``names`` ([B, T], -1 on
    padding), in the order :func:`pack` gives the same pieces."""
    valid = torch.cat([p.valid for p in pieces], dim=1)
    labels = torch.cat(
        [torch.full_like(p.valid, names.index(p.label), dtype=torch.long) for p in pieces], dim=1
    )
    order, keep = _left_aligned(valid)
    return torch.where(keep, torch.gather(labels, 1, order), -1)
