"""Training losses: anchored InfoNCE over the global batch, and the prototype loss.

Anchored InfoNCE (paper eq. 3-5), for anchor i of the local batch and candidates j of the GLOBAL
batch (every rank's embeddings, gathered with gradients flowing back to their owners):

    loss_i = -log exp(s(u_i, v_i)/tau) / Z_i
    Z_i    = exp(s(u_i, v_i)/tau) + sum_{j != i} m_ij [exp(s(u_i, v_j)/tau)      (term "uv")
                                                    + exp(s(u_i, u_j)/tau)      (term "uu")
                                                    + exp(s(v_i, v_j)/tau)]     (term "vv")
    m_ij   = 0 if s(u_i, u_j) or s(u_i, v_j) > s(u_i, v_i) + margin, else 1     (false negatives)

Each rank averages over its own anchors; DDP's gradient average then equals the gradient of the
mean over the concatenated global batch (tested against one process seeing that batch).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

# torch.distributed.nn.functional.all_gather is marked deprecated in favour of the functional
# collectives (all_gather_single_autograd), but those aborted 1 in 12 two-process gloo runs at exit
# here ("terminate called without an active exception"), the old one 0 in 24: keep the old one.
warnings.filterwarnings("ignore", message=r".*torch\.distributed\.nn\.functional\.all_gather is deprecated")


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` [n_r, ...] concatenated in rank order, differentiable; plus this rank's offset.

    Ranks may hold different row counts (the data plan folds a remainder into a last batch): rows
    are padded to the largest count for the collective and trimmed after. The backward pass sums
    every rank's gradient into the owner's rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts_ = [int(c) for c in counts]
    most = max(counts_)
    padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])]) if x.shape[0] < most else x
    parts = dist_nn.all_gather(padded.contiguous())  # backward: reduce-scatter (sum) to the owners
    return torch.cat([p[:c] for p, c in zip(parts, counts_)]), sum(counts_[:rank])


@dataclass
class ContrastiveStats:
    """Diagnostics of one contrastive step (detached)."""

    pos_sim: float  # mean s(u_i, v_i)
    neg_sim: float  # mean s(u_i, v_j), j != i
    masked_fraction: float  # fraction of candidate negatives j != i removed by the margin mask
    candidates: int  # global batch size


def anchored_infonce(
    u: torch.Tensor,
    v: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    margin: float | None = 0.1,
    uv: bool = True,
    uu: bool = True,
    vv: bool = True,
    gather: bool = True,
) -> tuple[torch.Tensor, ContrastiveStats]:
    """The anchored InfoNCE loss of this rank's anchors (see module docstring).

    Args:
        u, v: local anchored and answer embeddings [B, E], L2-normalised (cosine = dot product).
        temperature: tau (a tensor when it is learned).
        margin: the false-negative margin; ``None`` disables the mask (ablation).
        uv, uu, vv: which negative terms enter Z_i.
        gather: take candidates from every rank (the global batch).
    """
    if u.dtype in (torch.float16, torch.bfloat16):  # similarities and exp in full precision
        u, v = u.float(), v.float()
    if gather:
        u_all, offset = gather_with_grad(u)
        v_all, _ = gather_with_grad(v)
    else:
        u_all, v_all, offset = u, v, 0
    b, n = u.shape[0], u_all.shape[0]
    rows = torch.arange(b, device=u.device)
    self_col = rows + offset
    s_uv = u @ v_all.T  # [B, N]
    s_uu = u @ u_all.T
    s_vv = v @ v_all.T
    pos = s_uv[rows, self_col]
    not_self = torch.ones(b, n, dtype=torch.bool, device=u.device)
    not_self[rows, self_col] = False
    with torch.no_grad():
        if margin is None:
            keep = not_self
        else:
            limit = (pos + margin).unsqueeze(1)
            keep = not_self & (s_uu <= limit) & (s_uv <= limit)
    # Scale first, then mask with -inf: masked_fill zeroes the gradient of masked entries, so a
    # learned temperature never sees an inf * 0.
    blocks = [(s_uv / temperature).masked_fill((~keep & not_self) if uv else not_self, float("-inf"))]
    # (the uv block also holds the positive, at column self_col, which is never masked)
    if uu:
        blocks.append((s_uu / temperature).masked_fill(~keep, float("-inf")))
    if vv:
        blocks.append((s_vv / temperature).masked_fill(~keep, float("-inf")))
    logits = torch.cat(blocks, dim=1)
    loss = (torch.logsumexp(logits, dim=1) - pos / temperature).mean()
    with torch.no_grad():
        off = not_self.sum().clamp(min=1)
        stats = ContrastiveStats(
            pos_sim=float(pos.mean()),
            neg_sim=float((s_uv * not_self).sum() / off),
            masked_fraction=float(((~keep) & not_self).sum() / off),
            candidates=n,
        )
    return loss, stats


def prototype_loss(
    u: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Paper eq. 7: -mean log softmax_k(u_i . p_k / tau)[y_i]; ``prototypes`` [K, E], ``labels`` [B]."""
    return torch.nn.functional.cross_entropy(u.float() @ prototypes.float().T / temperature, labels)
