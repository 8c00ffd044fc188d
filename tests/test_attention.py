"""``qanchor analyze attention``: the masses of ``<USER_EMB>`` by input group, from the KV-cache path."""

from __future__ import annotations

import pytest
import torch

from qanchor_pl.eval.attention import cached_attention, eager_attention, group_names, uncached_attention
from qanchor_pl.model.kv_cache import anchor_from_prefix, encode_prefix
from tests.helpers.tiny import model_for


@pytest.mark.parametrize("variant", [{}, {"count_token": True, "pooling": "pna"}])
def test_masses_sum_to_one_per_position_and_equal_the_uncached_model(model_data, variant):
    inputs, batch = model_data
    m = model_for(inputs, **variant)
    names = group_names(m)
    prompt = torch.randn(6, m.hidden_size) * 0.1
    ids, mask = batch["query_ids"], batch["query_mask"]
    with eager_attention(m):
        prefix = encode_prefix(m, batch, groups=names)
        for p in (None, prompt):
            cached = cached_attention(m, prefix, ids, mask, p, names)
            full = uncached_attention(m, batch, ids, mask, p, names)
            layers = len(prefix.layers)
            assert cached.shape == (ids.shape[0], layers, len(names))
            torch.testing.assert_close(cached.sum(-1), torch.ones(ids.shape[0], layers), atol=1e-5, rtol=0)
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
            prompt_mass = cached[..., names.index("prompt")]
            assert bool((prompt_mass > 0).all()) if p is not None else bool((prompt_mass == 0).all())
            for g in [*m.user_encoder.token_names, "user", "query", "<USER_EMB>"]:  # every group is read
                assert bool((cached[..., names.index(g)] > 0).all()), g
    # the analysis leaves the model as the embedding job runs it (its fused attention kernel)
    assert torch.allclose(
        anchor_from_prefix(m, encode_prefix(m, batch), ids, mask), m.anchor(batch), atol=1e-5
    )
