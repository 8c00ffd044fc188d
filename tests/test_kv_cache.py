"""Prefix KV cache: the cached suffix path gives the same embeddings as the full sequence."""

from __future__ import annotations

import pytest
import torch

from qanchor_pl.model.kv_cache import anchor_from_prefix, encode_prefix
from tests.helpers.tiny import model_for


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"head_residual": True},
        {"embedding": "hidden"},
        {"event_time": True},
        {"event_counts": True},
        {"pooling": "pna"},
        {"count_token": True},
        {"pooling": "pna", "count_token": True, "event_counts": True},
    ],  # fmt: skip
)
def test_cached_embeddings_equal_full_sequence_for_every_query_and_prompt(model_data, variant):
    inputs, batch = model_data
    m = model_for(inputs, **variant)
    if m.residual is not None:  # away from its zero start, so the path really contributes
        torch.nn.init.normal_(m.residual.weight, std=0.1)
    if m.user_encoder.time_embedding is not None:
        torch.nn.init.normal_(m.user_encoder.time_embedding[2].weight, std=0.1)
    prefix = encode_prefix(m, batch)
    queries = [(batch["query_ids"], batch["query_mask"]),
               (batch["query_ids"][:, :3], batch["query_mask"][:, :3])]  # fmt: skip
    prompt = torch.randn(6, m.hidden_size) * 0.1
    with torch.no_grad():
        for ids, mask in queries:  # the same cache serves several queries in a row
            for p in (None, prompt):
                full = m.anchor({**batch, "query_ids": ids, "query_mask": mask}, prompt=p)
                cached = anchor_from_prefix(m, prefix, ids, mask, p)
                assert torch.allclose(full, cached, atol=1e-5)
    assert prefix.lengths.tolist() == prefix.mask.sum(1).tolist()
