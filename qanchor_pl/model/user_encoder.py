"""Hierarchical coarse-to-fine user encoder (paper eq. 1-2).

event tokens    z_evt[m,t] = MLP_m(LN(h[m,t]))                 one adapter per modality
modality token  z_mdl[m]   = MLP_mdl(LN(masked_mean_t z_evt[m,t]))  one adapter shared by modalities
tabular token   z_tab      = MLP_tab(LN(x_tab))                 the tabular modality's token
user token      z_usr      = MLP_usr(LN([z_mdl[1]; ...; z_tab]))  over all modality tokens
All outputs live in the LLM's hidden size and enter it through ``inputs_embeds``.
With ``event_time``, each event token also gets a learned embedding of its age before the cutoff
(added, like a position embedding): the LLM can then weigh recent events over old ones.
With ``event_counts``, each modality token also gets a learned embedding of how many events it
pools: the masked mean and the LayerNorm in front of every adapter are blind to the count, which
is the strongest single statistic of activity (log counts per category beat mean event vectors).
With ``pooling="pna"`` the modality adapter reads [mean ; mean x s ; mean / s], s = log(1+n)/delta
(PNA's scalers; delta = mean log(1+n) on the pretraining data), and with ``count_token`` a linear
map of the user's log(1 + count) per (modality, category) and per modality is one more token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def adapter(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear (the authors' adapter shape)."""
    return nn.Sequential(
        nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
    )


#: Ages are given to the time embedding as age / AGE_SCALE_DAYS and log1p(age) / log1p(AGE_SCALE_DAYS).
AGE_SCALE_DAYS = 90.0


def age_features(age_days: torch.Tensor) -> torch.Tensor:
    """[..., K] ages in days -> [..., K, 2] features of order 1."""
    age = age_days.clamp(min=0.0)
    return torch.stack(
        [age / AGE_SCALE_DAYS, torch.log1p(age) / torch.log1p(torch.tensor(AGE_SCALE_DAYS))], -1
    )


#: Counts are given to the count embedding as log1p(n) / log1p(COUNT_SCALE) and [n > 0].
COUNT_SCALE = 64.0


def count_features(mask: torch.Tensor) -> torch.Tensor:
    """[B, K] event mask -> [B, 2] features of order 1 of the number of events."""
    n = mask.float().sum(1)
    return torch.stack([torch.log1p(n) / torch.log1p(torch.tensor(COUNT_SCALE)), (n > 0).float()], -1)


def closed_embedding(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> GELU -> Linear whose last layer starts at zero (training starts from the model
    without it), drawn without touching the global RNG, so every other weight starts exactly as
    without it (a fair ablation)."""
    with torch.random.fork_rng(devices=[]):
        net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


def pna_pool(x: torch.Tensor, mask: torch.Tensor, delta: float) -> torch.Tensor:
    """[mean ; mean x s ; mean / s] over dim 1, s = log(1 + n) / delta (n events of each user):
    [B, 3H]. A user with no events gets zeros (its mean is zero)."""
    mean = masked_mean(x, mask)
    s = (torch.log1p(mask.to(x.dtype).sum(1, keepdim=True)) / max(delta, 1e-6)).to(x.dtype)
    return torch.cat([mean, mean * s, mean / s.clamp(min=1e-3)], -1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``x`` [B, K, H] where ``mask`` [B, K]; zeros for a user with no events."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


@dataclass
class UserTokens:
    """The encoder's output for a batch of users, before the structural layout."""

    user: torch.Tensor  # [B, H]
    modality: dict[str, torch.Tensor]  # name -> [B, H] (event modalities, then "tabular" if any)
    events: dict[str, torch.Tensor]  # event modality -> [B, K, H]
    event_mask: dict[str, torch.Tensor]  # event modality -> [B, K] bool
    counts: torch.Tensor | None = None  # [B, H] the count token (``count_token``), else None


class HierarchicalUserEncoder(nn.Module):
    """Turns per-modality event vectors (+ a tabular vector) into user, modality and event tokens.

    Args:
        event_dims: text-encoder output size per event modality (order = prefix order).
        tabular_dim: size of the tabular feature vector; 0 for none.
        hidden_size: the LLM's hidden size (output size of every adapter).
        adapter_hidden: inner width of the adapters.
        event_time: add a learned embedding of each event's age (needs ``event_age`` in forward).
        event_counts: add a learned embedding of each modality's event count to its token.
        pooling: "mean" or "pna" (count-aware; needs ``log_count_mean``).
        log_count_mean: per modality, PNA's delta (mean log(1 + n) on the pretraining data).
        categories: the model's categories per modality: with ``count_token``, a token made of the
            user's log counts per (modality, category) (needs ``event_category`` in forward).
        count_token: add that token.
    """

    def __init__(
        self,
        event_dims: dict[str, int],
        tabular_dim: int,
        hidden_size: int,
        adapter_hidden: int,
        event_time: bool = False,
        event_counts: bool = False,
        pooling: str = "mean",
        log_count_mean: dict[str, float] | None = None,
        categories: dict[str, tuple[str, ...]] | None = None,
        count_token: bool = False,
    ):
        super().__init__()
        from qanchor_pl.model.categories import CategoryIndex

        self.modalities = list(event_dims)
        self.pooling = pooling
        self.log_count_mean = {m: float((log_count_mean or {}).get(m, 1.0)) for m in self.modalities}
        self.category_index = CategoryIndex({m: (categories or {}).get(m, ()) for m in self.modalities})
        self.event_adapters = nn.ModuleDict(
            {m: adapter(d, adapter_hidden, hidden_size) for m, d in event_dims.items()}
        )
        # Shared by the modalities, closed at init (see closed_embedding).
        self.time_embedding = closed_embedding(2, adapter_hidden, hidden_size) if event_time else None
        self.count_embedding = closed_embedding(2, adapter_hidden, hidden_size) if event_counts else None
        pooled = 3 * hidden_size if pooling == "pna" else hidden_size
        self.modality_adapter = adapter(pooled, adapter_hidden, hidden_size)
        self.count_projection = (
            nn.Linear(self.category_index.width(self.modalities), hidden_size) if count_token else None
        )
        self.tabular_adapter = adapter(tabular_dim, adapter_hidden, hidden_size) if tabular_dim > 0 else None
        n_tokens = len(self.modalities) + (1 if tabular_dim > 0 else 0)
        self.user_adapter = adapter(n_tokens * hidden_size, adapter_hidden, hidden_size)

    @property
    def token_names(self) -> list[str]:
        """Modality token names in order (event modalities, then tabular)."""
        return self.modalities + (["tabular"] if self.tabular_adapter is not None else [])

    def forward(
        self,
        events: dict[str, torch.Tensor],
        event_mask: dict[str, torch.Tensor],
        tabular: torch.Tensor | None,
        event_age: dict[str, torch.Tensor] | None = None,
        event_category: dict[str, torch.Tensor] | None = None,
    ) -> UserTokens:
        dtype = self.modality_adapter[1].weight.dtype
        ev_tokens, masks, mdl = {}, {}, {}
        if self.time_embedding is not None and event_age is None:
            raise KeyError(
                "the model embeds event times but the batch has no 'event_age' (data without a cutoff?)"
            )
        for m in self.modalities:
            if m not in events:
                raise KeyError(f"batch has no events for modality '{m}' (it has {sorted(events)})")
            z = self.event_adapters[m](events[m].to(dtype))
            if self.time_embedding is not None:
                z = z + self.time_embedding(age_features(event_age[m].float()).to(dtype))
            ev_tokens[m], masks[m] = z, event_mask[m]
            if self.pooling == "pna":
                pooled = pna_pool(z, event_mask[m], self.log_count_mean[m])
            else:
                pooled = masked_mean(z, event_mask[m])
            mdl[m] = self.modality_adapter(pooled)
            if self.count_embedding is not None:
                mdl[m] = mdl[m] + self.count_embedding(count_features(event_mask[m]).to(dtype))
        if self.tabular_adapter is not None:
            if tabular is None:
                raise KeyError("the model has a tabular adapter but the batch has no 'tabular' tensor")
            mdl["tabular"] = self.tabular_adapter(tabular.to(dtype))
        user = self.user_adapter(torch.cat([mdl[m] for m in self.token_names], dim=-1))
        counts = None
        if self.count_projection is not None:
            if event_category is None:
                raise KeyError("the model has a count token but the batch has no 'event_category'")
            logs = self.category_index.log_count_vector(self.modalities, event_category, event_mask)
            counts = self.count_projection(logs.to(dtype))
        return UserTokens(user=user, modality=mdl, events=ev_tokens, event_mask=masks, counts=counts)
