"""Query-as-Anchor serving: encode each user's prefix once, then many short suffixes on top.

``PrefixCache`` keeps, per layer, the keys and values of a batch of packed (right-padded) user
prefixes. For a scenario, the suffix ``[soft prompt][query][<USER_EMB>]`` is packed, appended
after the padded prefix, and attends to it through a mask that hides the prefix padding; its
position ids continue from each user's real prefix length, so RoPE sees exactly the positions of
the full sequence and the embedding equals the uncached one (tested to 1e-5).

transformers' ``DynamicCache`` grows in place when a forward uses it (FACTS.md), so every suffix
gets a fresh cache object built from the same layer tensors (no copy is made).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from qanchor_pl.model import backbone as bb
from qanchor_pl.model.qanchor import QAnchorModel
from qanchor_pl.model.sequence import Role, pack, pack_labels


@dataclass
class PrefixCache:
    """Keys/values of a batch of user prefixes."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [B, kv_heads, P, head_dim] each
    mask: torch.Tensor  # [B, P] long, 1 on real prefix slots
    lengths: torch.Tensor  # [B] real prefix length per user
    summary: torch.Tensor | None = None  # the head's residual-path input, when the model has one
    groups: torch.Tensor | None = None  # [B, P] each prefix slot's input group (attention analysis)

    def fresh(self) -> DynamicCache:
        return DynamicCache([(k, v) for k, v in self.layers])


@torch.no_grad()
def encode_prefix(model: QAnchorModel, batch: dict, groups: list[str] | None = None) -> PrefixCache:
    """Run the user prefixes once and keep their KV cache (and, given the ``groups`` names, each
    prefix slot's group, for the attention analysis)."""
    tok = model.user_tokens(batch)
    pieces = model.prefix_pieces(batch, tok)
    packed = pack(pieces)
    out = bb.decoder_of(model.backbone)(
        inputs_embeds=packed.embeds, attention_mask=packed.attention_mask, use_cache=True
    )
    cache = out.past_key_values
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    return PrefixCache(
        layers=layers, mask=packed.attention_mask, lengths=packed.lengths, summary=model.user_summary(tok),
        groups=pack_labels(pieces, groups) if groups is not None else None,
    )  # fmt: skip


@torch.no_grad()
def anchor_from_prefix(
    model: QAnchorModel,
    prefix: PrefixCache,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anchored embeddings u [B, E] for one scenario, computing only the suffix."""
    suffix, out = suffix_forward(model, prefix, query_ids, query_mask, prompt)
    h = out.last_hidden_state
    rows = torch.arange(h.shape[0], device=h.device)
    return model.project_user(h[rows, suffix.position_of(Role.USER_EMB)], prefix.summary)


@torch.no_grad()
def suffix_forward(
    model: QAnchorModel,
    prefix: PrefixCache,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    prompt: torch.Tensor | None = None,
    *,
    output_attentions: bool = False,
):
    """(the packed suffix, the decoder's output) for one scenario's suffix on the prefix cache."""
    suffix = pack(model.suffix_pieces(query_ids, query_mask, prompt))
    mask = torch.cat([prefix.mask, suffix.attention_mask], dim=1)
    steps = torch.arange(suffix.embeds.shape[1], device=query_ids.device)
    position_ids = prefix.lengths.unsqueeze(1) + steps.unsqueeze(0)
    out = bb.decoder_of(model.backbone)(
        inputs_embeds=suffix.embeds,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=prefix.fresh(),
        use_cache=True,
        output_attentions=output_attentions,
    )
    return suffix, out
