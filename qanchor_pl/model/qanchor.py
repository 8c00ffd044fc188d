"""The Q-Anchor model: hierarchical user encoder + LLM backbone + projection head.

Anchor tower: ``[user prefix][query][<USER_EMB>]`` -> hidden state at ``<USER_EMB>`` -> head -> u.
Semantic tower: the answer text alone -> hidden state at its last real token -> the same head -> v.
During pretraining the answer is appended after ``<USER_EMB>``: one causal forward gives u (blind
to the answer, which comes later) and the next-token loss on the answer, with the LM head applied
only at the positions that predict answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data_modules.util.vector_math import settle_vector_math_dispatch
from qanchor_pl.model import backbone as bb
from qanchor_pl.model.config import QAnchorConfig
from qanchor_pl.model.heads import ProjectionHead
from qanchor_pl.model.sequence import Packed, Piece, Role, pack, text_piece
from qanchor_pl.model.special_tokens import USER_EMB, USER_MARKER, SpecialTokens, modality_markers
from qanchor_pl.model.user_encoder import HierarchicalUserEncoder, UserTokens


@dataclass
class AnchorOutput:
    """What one pretraining forward returns."""

    u: torch.Tensor  # [B, E] anchored user embeddings (L2-normalised)
    v: torch.Tensor | None  # [B, E] answer embeddings, if the semantic tower ran
    ntp_loss: torch.Tensor | None  # mean next-token loss over answer tokens, if computed
    anchor_tokens: int  # real tokens through the anchor tower
    answer_tokens: int  # real tokens through the semantic tower
    ntp_tokens: int = 0  # answer tokens the NTP loss averages over (a chunk's weight in a batch's mean)
    slots: int = 0  # padded positions through both towers (real tokens + padding)


class QAnchorModel(nn.Module):
    """The model, independent of Lightning (used by the LightningModules, export and serving).

    Args:
        config: the model's settings; ``config.inputs`` describes the data (modalities, sizes,
            tokenizer). The backbone is built or loaded here; with LoRA its base is frozen.
        backbone_module: an already built backbone (e.g. read back from an export folder) to use
            instead of building one from ``config``.
    """

    def __init__(self, config: QAnchorConfig, backbone_module: nn.Module | None = None) -> None:
        super().__init__()
        settle_vector_math_dispatch()  # before any parallel cos/sin: repeatable CPU runs
        self.config = config
        self.tokenizer = bb.load_tokenizer(config.inputs.tokenizer)
        if backbone_module is not None:
            lm = backbone_module
        elif config.backbone == "tiny":
            lm = bb.build_tiny(
                config.tiny, len(self.tokenizer), self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
            )
        else:
            lm = bb.load_pretrained(config.backbone, config.backbone_dtype)
        if backbone_module is None and config.lora is not None:
            lm = bb.apply_lora(lm, config.lora)
        if config.gradient_checkpointing:
            bb.base_causal_lm(lm).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.backbone = lm
        hidden = bb.base_causal_lm(lm).config.hidden_size
        self.hidden_size = hidden
        inputs = config.inputs
        missing = [m for m in inputs.modalities if m not in inputs.event_dims]
        if missing:
            raise ValueError(f"event_dims has no size for modalities {missing}")
        self.user_encoder = HierarchicalUserEncoder(
            {m: inputs.event_dims[m] for m in inputs.modalities},
            inputs.tabular_dim,
            hidden,
            config.adapter_hidden or hidden,
            event_time=config.event_time,
            event_counts=config.event_counts,
            pooling=config.pooling,
            log_count_mean=inputs.log_count_mean,
            categories=inputs.categories,
            count_token=config.count_token,
        )
        names = [USER_EMB]
        if config.user_marker:
            names.append(USER_MARKER)
        if config.modality_markers:
            names += [t for m in self.user_encoder.token_names for t in modality_markers(m)]
        self.special = SpecialTokens(names, hidden, table=self.token_embedding.weight)
        self.head = ProjectionHead(hidden, config.head_hidden, config.embed_dim)
        # Zero-initialised: training starts from the plain model and grows the path if it helps.
        self.residual = nn.Linear(hidden, hidden) if config.head_residual else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)
            nn.init.zeros_(self.residual.bias)
        self.train()  # from_pretrained returns eval mode; LoRA dropout must be live when training

    # -- building blocks ------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """Width of the user embedding ``u``."""
        return self.config.embed_dim if self.config.embedding == "head" else self.hidden_size

    @property
    def token_embedding(self) -> nn.Module:
        return bb.token_embeddings_of(self.backbone)

    def _special(self, name: str, batch: int, like: torch.Tensor, label: str) -> Piece:
        e = self.special(name, batch).to(like.dtype)
        return Piece(e, torch.ones(batch, 1, dtype=torch.bool, device=like.device), Role.PREFIX, label=label)

    def user_tokens(self, batch: dict[str, Any]) -> UserTokens:
        return self.user_encoder(
            batch["events"], batch["event_mask"], batch.get("tabular"), batch.get("event_age"),
            batch.get("event_category"),
        )  # fmt: skip

    def user_summary(self, tok: UserTokens) -> torch.Tensor | None:
        """The residual path's input (mean of the modality tokens and the count token), or None
        without that path."""
        if self.residual is None:
            return None
        tokens = list(tok.modality.values()) + ([tok.counts] if tok.counts is not None else [])
        return torch.stack(tokens, 0).mean(0)

    def project_user(self, hidden: torch.Tensor, summary: torch.Tensor | None) -> torch.Tensor:
        """``<USER_EMB>`` hidden states [B, H] (+ the residual path) -> user embeddings u [B, E]."""
        if self.residual is not None and summary is not None:
            hidden = hidden + self.residual(summary.to(hidden.dtype))
        if self.config.embedding == "hidden":
            return F.normalize(hidden.float(), dim=-1)
        return self.head(hidden)

    def prefix_pieces(self, batch: dict[str, Any], tok: UserTokens | None = None) -> list[Piece]:
        """The user prefix ``e_i``: user token, then per modality [marker, modality token, events, marker]."""
        tok = tok if tok is not None else self.user_tokens(batch)
        b = tok.user.shape[0]
        one = torch.ones(b, 1, dtype=torch.bool, device=tok.user.device)
        pieces: list[Piece] = []
        if self.config.user_marker:
            pieces.append(self._special(USER_MARKER, b, tok.user, "user"))
        pieces.append(Piece(tok.user.unsqueeze(1), one, Role.PREFIX, label="user"))
        if tok.counts is not None:
            pieces.append(Piece(tok.counts.unsqueeze(1), one, Role.PREFIX, label="counts"))
        for name in self.user_encoder.token_names:  # a modality's markers, token and events: its group
            start, end = modality_markers(name)
            if self.config.modality_markers:
                pieces.append(self._special(start, b, tok.user, name))
            pieces.append(Piece(tok.modality[name].unsqueeze(1), one, Role.PREFIX, label=name))
            if name in tok.events:
                pieces.append(Piece(tok.events[name], tok.event_mask[name].bool(), Role.PREFIX, label=name))
            if self.config.modality_markers:
                pieces.append(self._special(end, b, tok.user, name))
        return pieces

    def hidden_states(self, packed: Packed) -> torch.Tensor:
        out = bb.decoder_of(self.backbone)(
            inputs_embeds=packed.embeds, attention_mask=packed.attention_mask, use_cache=False
        )
        return out.last_hidden_state

    def embed_texts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Semantic tower: each text's hidden state at its last real token, projected: [B, E]."""
        out = bb.decoder_of(self.backbone)(input_ids=ids, attention_mask=mask.long(), use_cache=False)
        last = (mask.long().sum(1) - 1).clamp(min=0)
        h = out.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), last]
        return self.head(h)

    def suffix_pieces(
        self, query_ids: torch.Tensor, query_mask: torch.Tensor, prompt: torch.Tensor | None = None
    ) -> list[Piece]:
        """``[soft prompt?][query][<USER_EMB>]``: everything after the user prefix."""
        b, device = query_ids.shape[0], query_ids.device
        emb = self.token_embedding
        pieces = []
        if prompt is not None:  # [P, H] soft prompt shared by the batch
            ones = torch.ones(b, prompt.shape[0], dtype=torch.bool, device=device)
            pieces.append(
                Piece(prompt.to(emb.weight.dtype).expand(b, -1, -1), ones, Role.PROMPT, label="prompt")
            )
        query = text_piece(emb, query_ids, query_mask, Role.QUERY)
        query.label = "query"
        pieces.append(query)
        user_emb = self.special(USER_EMB, b).to(emb.weight.dtype)
        pieces.append(
            Piece(user_emb, torch.ones(b, 1, dtype=torch.bool, device=device), Role.USER_EMB, label=USER_EMB)
        )
        return pieces

    def anchor_sequence(
        self,
        batch: dict[str, Any],
        *,
        prompt: torch.Tensor | None = None,
        with_answer: bool = False,
        tok: UserTokens | None = None,
    ) -> Packed:
        """``[prefix][prompt?][query][<USER_EMB>][answer?]`` packed for the backbone."""
        pieces = self.prefix_pieces(batch, tok) + self.suffix_pieces(
            batch["query_ids"], batch["query_mask"], prompt
        )
        if with_answer:
            pieces.append(
                text_piece(self.token_embedding, batch["answer_ids"], batch["answer_mask"], Role.ANSWER)
            )
        return pack(pieces)

    # -- the towers -----------------------------------------------------------------------------
    def anchor(self, batch: dict[str, Any], *, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Anchored user embeddings u [B, E] (no answer in the sequence)."""
        tok = self.user_tokens(batch)
        packed = self.anchor_sequence(batch, prompt=prompt, tok=tok)
        h = self.hidden_states(packed)
        pos = packed.position_of(Role.USER_EMB)
        return self.project_user(h[torch.arange(h.shape[0], device=h.device), pos], self.user_summary(tok))

    def forward(self, batch: dict[str, Any], *, semantic: bool = True, ntp: bool = True) -> AnchorOutput:
        """Pretraining forward: u (and the NTP loss from the same pass) and, if asked, v."""
        tok = self.user_tokens(batch)
        packed = self.anchor_sequence(batch, with_answer=ntp, tok=tok)
        h = self.hidden_states(packed)
        rows = torch.arange(h.shape[0], device=h.device)
        u = self.project_user(h[rows, packed.position_of(Role.USER_EMB)], self.user_summary(tok))
        ntp_loss = self.answer_ntp_loss(h, packed) if ntp else None
        ntp_tokens = int((packed.role[:, 1:] == int(Role.ANSWER)).sum()) if ntp else 0
        v = self.embed_texts(batch["answer_ids"], batch["answer_mask"]) if semantic else None
        return AnchorOutput(
            u=u,
            v=v,
            ntp_loss=ntp_loss,
            anchor_tokens=int(packed.attention_mask.sum()),
            answer_tokens=int(batch["answer_mask"].sum()) if semantic else 0,
            ntp_tokens=ntp_tokens,
            slots=int(packed.attention_mask.numel()) + (int(batch["answer_mask"].numel()) if semantic else 0),
        )

    def answer_ntp_loss(self, hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens, each predicted from the slot before it.

        The LM head runs only on those slots: over a long user prefix the full [B, T, vocab]
        logits would dominate memory for nothing."""
        targets_here = packed.role[:, 1:] == int(Role.ANSWER)
        src = hidden[:, :-1][targets_here]
        targets = packed.token_ids[:, 1:][targets_here]
        logits = bb.lm_head_of(self.backbone)(src).float()
        return F.cross_entropy(logits, targets)

    # -- bookkeeping ----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (plus this model's own buffers): what checkpoints keep."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def flops_per_token(self) -> float:
        """~6 x (non-embedding backbone parameters) training FLOPs per token (forward + backward);
        attention's quadratic term is left out (small next to the MLPs at ~1k tokens)."""
        lm = bb.base_causal_lm(self.backbone)
        n = sum(
            p.numel()
            for name, p in lm.named_parameters()
            if "embed_tokens" not in name and "lm_head" not in name
        )
        return 6.0 * n
