"""The gradient cache: a contrastive batch larger than memory holds, with the same gradients.

The anchored InfoNCE couples every user of the (global) batch, so the batch cannot be split into
independent micro-batches the way gradient accumulation splits a per-sample loss. The gradient
cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; GritLM's and sentence-transformers' cached losses) splits the *backbone's* work instead:

1. every chunk of ``chunk_size`` rows runs forward without gradients; u, v, the chunk's NTP loss
   and the rng state before the chunk are kept;
2. the batch-level losses (anchored InfoNCE with the cross-rank gather and the margin mask, the
   future anchor, the count reconstruction) run on the cached u and v, and give d loss / d u and
   d loss / d v;
3. every chunk runs forward again with gradients, from the same rng state (the same dropout
   masks), and back-propagates ``<u_c, dL/du_c> + <v_c, dL/dv_c> + its share of the NTP loss``.

Peak activation memory is one chunk's instead of the batch's; the price is a second forward.
The parameter gradients equal the plain step's (tested to 1e-6 relative on 1 and 2 processes).

Under DDP the chunks' backward passes run inside the DDP forward, where the reducer does not
listen, so their gradients accumulate locally; the last chunk's backward is the one Lightning
runs on the returned loss (which also carries the batch-level losses once more, for the heads'
and the temperature's gradients): DDP averages everything accumulated then, once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from data_modules.loading.collate import batch_rows


@dataclass(frozen=True)
class GradCacheSpec:
    """``chunk_size``: rows per forward chunk; ``None`` = off (one forward for the whole batch)."""

    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"grad_cache.chunk_size must be >= 1 (or null = off), got {self.chunk_size}")


class RngState:
    """The CPU and current CUDA device rng states at one moment, to replay a chunk's dropout."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


# Whole-batch entries the losses read but the model's forward does not: never split into chunks.
WHOLE_BATCH_KEYS = ("future", "vocab_sample")


def chunk_batches(batch: dict[str, Any], rows: int, chunk_size: int) -> list[dict[str, Any]]:
    """The batch cut into chunks of ``chunk_size`` rows (the last may be smaller), for the model."""
    model_part = {k: v for k, v in batch.items() if k not in WHOLE_BATCH_KEYS}
    return [batch_rows(model_part, slice(lo, lo + chunk_size), rows) for lo in range(0, rows, chunk_size)]


@dataclass
class CachedForward:
    """Step 1's results: u and v of the whole batch (no graph), the NTP figures, the rng states."""

    u: torch.Tensor
    v: torch.Tensor | None
    ntp_loss: torch.Tensor | None  # mean over the batch's answer tokens
    ntp_tokens: list[int]  # answer tokens per chunk
    rng: list[RngState]
    anchor_tokens: int
    answer_tokens: int
    slots: int  # padded positions (each chunk pads to its own longest member)


def cached_forward(model: torch.nn.Module, chunks: list[dict[str, Any]], *, semantic: bool, ntp: bool,
                   device: torch.device) -> CachedForward:  # fmt: skip
    """Step 1: every chunk forward without gradients."""
    us, vs, ntp_sums, ntp_tokens, rng = [], [], [], [], []
    anchor_tokens = answer_tokens = slots = 0
    with torch.no_grad():
        for chunk in chunks:
            rng.append(RngState(device))
            out = model(chunk, semantic=semantic, ntp=ntp)
            us.append(out.u)
            vs.append(out.v)
            if ntp:
                ntp_tokens.append(out.ntp_tokens)
                ntp_sums.append(out.ntp_loss.float() * out.ntp_tokens)
            anchor_tokens += out.anchor_tokens
            answer_tokens += out.answer_tokens
            slots += out.slots
    ntp_loss = torch.stack(ntp_sums).sum() / max(sum(ntp_tokens), 1) if ntp else None
    return CachedForward(
        u=torch.cat(us), v=torch.cat(vs) if semantic else None, ntp_loss=ntp_loss, ntp_tokens=ntp_tokens,
        rng=rng, anchor_tokens=anchor_tokens, answer_tokens=answer_tokens, slots=slots,
    )  # fmt: skip


def embedding_gradients(
    batch_loss: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Step 2: d batch_loss / d u and / d v on the cached embeddings (``None`` where no path).

    The graph is kept: the batch loss is back-propagated once more at the end, for the gradients
    of the parameters it owns (temperature, heads), which this call leaves untouched."""
    leaves = [u] + ([v] if v is not None else [])
    if not batch_loss.requires_grad:
        return None, None
    grads = torch.autograd.grad(batch_loss, leaves, retain_graph=True, allow_unused=True)
    return grads[0], grads[1] if v is not None else None


def replay_backward(
    model: torch.nn.Module,
    chunks: list[dict[str, Any]],
    cache: CachedForward,
    du: torch.Tensor | None,
    dv: torch.Tensor | None,
    *,
    semantic: bool,
    ntp_weight: float,
    backward: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """Step 3: every chunk forward again with gradients; all but the last back-propagated with
    ``backward``; the last chunk's surrogate loss is returned (the caller's backward runs it)."""
    total_ntp = max(sum(cache.ntp_tokens), 1)
    lo, surrogate = 0, None
    for k, chunk in enumerate(chunks):
        cache.rng[k].restore()  # the same dropout masks as the cached pass
        out = model(chunk, semantic=semantic, ntp=ntp_weight > 0)
        hi = lo + out.u.shape[0]
        surrogate = out.u.new_zeros((), dtype=torch.float32)
        if du is not None:
            surrogate = surrogate + (out.u.float() * du[lo:hi].float()).sum()
        if dv is not None and out.v is not None:
            surrogate = surrogate + (out.v.float() * dv[lo:hi].float()).sum()
        if ntp_weight > 0:
            surrogate = surrogate + ntp_weight * out.ntp_loss.float() * (cache.ntp_tokens[k] / total_ntp)
        if k < len(chunks) - 1:
            backward(surrogate)
        lo = hi
    return surrogate
