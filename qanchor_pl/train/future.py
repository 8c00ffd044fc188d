"""The future-behaviour anchor and the count reconstruction: training heads on the embedding u.

Every downstream label is "does the user do an activity of these kinds in the next window"; these
terms ask u itself to know that (and to hold what a count of the user's own events holds):

- **multi-label future** (form "multilabel", after Ant Group's MSDP): for each (modality,
  category) and each modality total, "occurs within the next W days" for W in ``windows``,
  a linear decoder on u, binary cross-entropy;
- **dense all-action** (form "dense", PinnerFormer's loss): every future event (up to a cap) is a
  positive for u, scored by the cosine of u with a learned projection of the event's frozen text
  vector (+ a category embedding) over a learned temperature; negatives are the other users'
  future events of the global batch and random vocabulary entries, with the logQ correction and
  the user's own positives masked;
- **reconstruction**: a linear decoder from u to the user's log(1 + count) per (modality,
  category) and per modality, mean squared error.

The heads live in the PretrainModule, not in the exported model: serving never computes them.
Row means are taken over the GLOBAL batch (a rank's sum divided by the global row count over the
world size), so DDP's gradient average equals one process on the concatenated batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qanchor_pl.model.categories import CategoryIndex
from qanchor_pl.train.losses import gather_with_grad


@dataclass(frozen=True)
class FutureSpec:
    """The future-behaviour anchor on u (off by default: the paper's objective)."""

    weight: float = 0.0  # 0 = off
    form: str = "multilabel"  # "multilabel" (occurs within W days) | "dense" (every future event)
    windows: tuple[int, ...] = (7, 14, 30)  # multilabel: days after the cutoff
    # "all": u under every query of the batch; "future": only rows whose QA pair is D_future
    queries: str = "all"
    temperature: float = 0.1  # dense: initial temperature (learned, at least 0.01)
    max_events: int = 32  # dense: future events per user and modality taken as positives
    random_negatives: int = 64  # dense: random vocabulary entries per modality and step

    def __post_init__(self) -> None:
        if self.form not in ("multilabel", "dense"):
            raise ValueError(f"future.form must be 'multilabel' or 'dense', got {self.form!r}")
        if self.queries not in ("all", "future"):
            raise ValueError(f"future.queries must be 'all' or 'future', got {self.queries!r}")
        if not self.windows or any(w <= 0 for w in self.windows):
            raise ValueError(f"future.windows must be positive days, got {self.windows}")


def global_mean(per_row: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(weight * per_row) / (global sum of weight / world): this rank's share of the mean over
    the global batch (DDP averages the ranks' gradients)."""
    total = weight.detach().sum()
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        total = total.clone()
        dist.all_reduce(total)
    return (per_row * weight).sum() / (total / world).clamp(min=1e-12)


def future_occurrence(
    index: CategoryIndex,
    modalities: Sequence[str],
    future: dict[str, dict[str, torch.Tensor]],
    windows: Sequence[int],
) -> torch.Tensor:
    """[B, T] 0/1 targets: per modality, per (category..., any event), per window W, "occurs within
    W days after the cutoff" (T = sum over modalities of (categories + 1) x windows)."""
    out = []
    for m in modalities:
        f = future[m]
        n = index.size(m)
        idx = index.index(m, f["category"])
        for_m = []
        for w in windows:
            within = (f["mask"] & (f["age"] < w)).float()
            per = torch.zeros(idx.shape[0], n + 1, device=idx.device)
            per.scatter_add_(1, idx, within)
            per[:, n] = within.sum(1)
            for_m.append((per > 0).float())
        out.append(torch.stack(for_m, -1).flatten(1))  # [B, (n+1) * W], category-major
    return torch.cat(out, 1)


def occurrence_width(index: CategoryIndex, modalities: Sequence[str], windows: Sequence[int]) -> int:
    return index.width(modalities) * len(windows)


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over targets, then over the selected rows of the global batch."""
    per_row = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(1)
    return global_mean(per_row, rows.float())


def reconstruction_loss(pred: torch.Tensor, log_counts: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the log counts, averaged over columns, then over the global batch."""
    per_row = (pred.float() - log_counts).pow(2).mean(1)
    return global_mean(per_row, torch.ones_like(per_row))


def dense_all_action_loss(
    u: torch.Tensor,
    pos: torch.Tensor,
    pos_owner: torch.Tensor,
    pos_logq: torch.Tensor,
    neg: torch.Tensor,
    neg_logq: torch.Tensor,
    temperature: torch.Tensor | float,
    rows: torch.Tensor,
) -> torch.Tensor:
    """PinnerFormer's sampled softmax, averaged over positives, then over the global batch's users.

    Args:
        u: [B, E] this rank's embeddings (L2-normalised).
        pos: [P, E] this rank's positives (normalised event embeddings); ``pos_owner`` [P] their
            user's row in ``u``; ``pos_logq`` [P] log of their sampling probability.
        neg: [R, E] random vocabulary entries (the same on every rank), ``neg_logq`` [R].
        rows: [B] which users count (bool).
    Candidates for user i: every positive of the global batch (gathered across ranks, the user's
    own masked) and the random entries, each scored cos/temperature - logQ; the positive itself
    is scored the same way (the logQ correction applies to it too, as in sampled softmax)."""
    b = u.shape[0]
    per_rank = _rows_per_rank(b, u.device)
    user_offset = int(per_rank[: _rank()].sum())
    all_pos, offset = gather_with_grad(pos)
    meta = torch.stack([(pos_owner + user_offset).to(torch.float64), pos_logq.to(torch.float64)], 1)
    meta_all, _ = gather_with_grad(meta.detach())
    owner_all, logq_all = meta_all[:, 0].round().long(), meta_all[:, 1].float()
    me = torch.arange(b, device=u.device) + user_offset
    s_pos = (u @ all_pos.T).float() / temperature - logq_all  # [B, P_all]
    s_neg = (u @ neg.T).float() / temperature - neg_logq  # [B, R]
    own = owner_all.unsqueeze(0) == me.unsqueeze(1)
    lse_neg = torch.logsumexp(torch.cat([s_pos.masked_fill(own, float("-inf")), s_neg], 1), 1)  # [B]
    local = torch.arange(pos.shape[0], device=u.device)
    pos_score = s_pos[pos_owner, local + offset]
    per_pos = -pos_score + torch.logaddexp(pos_score, lse_neg[pos_owner])
    n_pos = torch.zeros(b, device=u.device, dtype=per_pos.dtype).index_add_(
        0, pos_owner, torch.ones_like(per_pos)
    )
    per_user = torch.zeros(b, device=u.device, dtype=per_pos.dtype).index_add_(
        0, pos_owner, per_pos
    ) / n_pos.clamp(min=1)
    return global_mean(per_user, (rows & (n_pos > 0)).float())


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _rows_per_rank(n: int, device: torch.device) -> torch.Tensor:
    """[world] row counts of a tensor with ``n`` rows on this rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return torch.tensor([n], device=device)
    t = torch.tensor([n], device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.cat(out)


class FutureHeads(nn.Module):
    """The training heads on u: the multi-label decoder, the dense event tower, the reconstruction
    decoder (each only when its weight is on).

    Args:
        embed_dim: width of u.
        index: the model's categories per modality.
        modalities: event modalities in order.
        event_dims: text-vector width per modality (dense form).
        spec: the future anchor's settings; ``reconstruction``: whether to build that decoder.
    """

    def __init__(
        self,
        embed_dim: int,
        index: CategoryIndex,
        modalities: Sequence[str],
        event_dims: dict[str, int],
        spec: FutureSpec,
        reconstruction: bool,
    ) -> None:
        super().__init__()
        self.spec, self.index, self.modalities = spec, index, list(modalities)
        on = spec.weight > 0
        self.occurrence = (
            nn.Linear(embed_dim, occurrence_width(index, modalities, spec.windows))
            if on and spec.form == "multilabel"
            else None
        )
        self.event_projection = None
        if on and spec.form == "dense":
            self.event_projection = nn.ModuleDict(
                {m: nn.Linear(event_dims[m], embed_dim) for m in modalities}
            )
            self.category_embedding = nn.ModuleDict(
                {m: nn.Embedding(index.size(m) + 1, embed_dim) for m in modalities}
            )
            for emb in self.category_embedding.values():
                nn.init.zeros_(emb.weight)  # starts from the text alone
            self.log_temperature = nn.Parameter(torch.tensor(math.log(spec.temperature)))
        self.reconstruction = nn.Linear(embed_dim, index.width(modalities)) if reconstruction else None

    def event_embedding(self, m: str, vectors: torch.Tensor, category_keys: torch.Tensor) -> torch.Tensor:
        """[N, D] text vectors (+ category keys [N]) -> [N, E] normalised event embeddings."""
        proj = self.event_projection[m]
        e = proj(vectors.to(proj.weight.dtype))  # the heads' precision (float32 under bf16 autocast)
        e = e + self.category_embedding[m](self.index.index(m, category_keys))
        return F.normalize(e, dim=-1)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=0.01)

    def rows(self, batch: dict[str, Any], u: torch.Tensor) -> torch.Tensor:
        """[B] bool: the rows the future anchor applies to."""
        if self.spec.queries == "all":
            return torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        return torch.tensor([s == "future" for s in batch["qa_source"]], dtype=torch.bool, device=u.device)

    def future_loss(self, batch: dict[str, Any], u: torch.Tensor) -> torch.Tensor:
        if "future" not in batch:
            raise KeyError(
                "the future anchor is on but the batch has no future events: build the pretraining data "
                "with `qanchor build --future_events true`"
            )
        rows = self.rows(batch, u)
        if self.occurrence is not None:
            targets = future_occurrence(self.index, self.modalities, batch["future"], self.spec.windows)
            return multilabel_loss(self.occurrence(u.to(self.occurrence.weight.dtype)), targets, rows)
        return self._dense(batch, u, rows)

    def _dense(self, batch: dict[str, Any], u: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        pos, owner, logq, neg, neg_logq = [], [], [], [], []
        for m in self.modalities:
            f = batch["future"][m]
            keep = f["mask"] & (f["ids"] >= 0)  # a text the history never had has no vector
            keep &= torch.cumsum(keep.long(), 1) <= self.spec.max_events
            r, c = keep.nonzero(as_tuple=True)
            pos.append(self.event_embedding(m, f["vectors"][r, c], f["category"][r, c]))
            owner.append(r)
            logq.append(f["logq"][r, c])
            sample = batch["vocab_sample"][m]
            neg.append(self.event_embedding(m, sample["vectors"], sample["category"]))
            neg_logq.append(sample["logq"])
        return dense_all_action_loss(
            u.to(self.log_temperature.dtype), torch.cat(pos), torch.cat(owner), torch.cat(logq).float(),
            torch.cat(neg), torch.cat(neg_logq).float(), self.temperature, rows,
        )  # fmt: skip

    def reconstruction_loss(self, batch: dict[str, Any], u: torch.Tensor) -> torch.Tensor:
        target = self.index.log_count_vector(self.modalities, batch["event_category"], batch["event_mask"])
        return reconstruction_loss(self.reconstruction(u.to(self.reconstruction.weight.dtype)), target)
