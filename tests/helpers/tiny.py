"""A very small Q-Anchor model for unit tests."""

from __future__ import annotations

import torch

from qanchor_pl.model.config import DataInputs, QAnchorConfig, TinyBackbone
from qanchor_pl.model.qanchor import QAnchorModel

TINY = TinyBackbone(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def model_for(inputs: DataInputs, **kw) -> QAnchorModel:
    """A tiny model (whole backbone trainable unless ``lora`` is given), in eval mode."""
    kw.setdefault("lora", None)
    torch.manual_seed(0)
    return QAnchorModel(QAnchorConfig(inputs=inputs, tiny=TINY, head_hidden=32, embed_dim=16, **kw)).eval()
