"""``qanchor bench kv-cache``: multi-scenario embedding with and without the prefix KV cache.

A random-weight model of Qwen-like proportions sized for the CPU, user prefixes with the paper's
event caps (~700 tokens), n scenarios with ~20-token queries. Reports both wall times, the
measured speedup and the ideal speedup n(P+Q)/(P+nQ) (P prefix tokens, Q suffix tokens per
scenario): attention over the prefix makes the cached suffix slightly dearer than Q tokens alone.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection

from data_modules.builder.caps import PAPER_CAPS
from data_modules.encode.encoders import minilm_path
from qanchor_pl.model.config import DataInputs, QAnchorConfig, TinyBackbone
from qanchor_pl.model.kv_cache import anchor_from_prefix, encode_prefix
from qanchor_pl.model.qanchor import QAnchorModel


def synthetic_batch(
    users: int, event_dim: int, tabular_dim: int, query_len: int, vocab: int, seed: int = 0
) -> dict:
    g = torch.Generator().manual_seed(seed)
    caps = dict(PAPER_CAPS)
    return {
        "user_id": [f"u{i}" for i in range(users)],
        "events": {m: torch.randn(users, c, event_dim, generator=g) for m, c in caps.items()},
        "event_mask": {m: torch.ones(users, c, dtype=torch.bool) for m, c in caps.items()},
        "tabular": torch.randn(users, tabular_dim, generator=g),
        "query_ids": torch.randint(10, vocab, (users, query_len), generator=g),
        "query_mask": torch.ones(users, query_len, dtype=torch.bool),
    }


def _median_seconds(fn, repeats: int, device: str = "cpu") -> float:
    def sync() -> None:
        if device.startswith("cuda"):  # kernels run asynchronously: time what was done
            torch.cuda.synchronize()

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _to(batch: Any, device: str, dtype: torch.dtype) -> Any:
    """The batch on ``device``, float tensors in ``dtype``."""
    return apply_to_collection(
        batch, torch.Tensor, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    )


@torch.no_grad()
def bench_kv_cache(
    *,
    users: int = 8,
    scenarios: int = 10,
    query_len: int = 20,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 1408,
    event_dim: int = 64,
    tabular_dim: int = 64,
    repeats: int = 3,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    inputs = DataInputs(
        tokenizer=str(minilm_path()), modalities=tuple(PAPER_CAPS), event_dims=dict.fromkeys(PAPER_CAPS, event_dim),
        tabular_dim=tabular_dim,
    )  # fmt: skip
    shape = TinyBackbone(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                         intermediate_size=intermediate)  # fmt: skip
    model = QAnchorModel(QAnchorConfig(inputs=inputs, tiny=shape, lora=None)).eval()
    model = model.to(device=device, dtype=getattr(torch, dtype))
    vocab = len(model.tokenizer)
    batch = _to(
        synthetic_batch(users, event_dim, tabular_dim, query_len, vocab), device, getattr(torch, dtype)
    )
    queries = [
        torch.randint(10, vocab, (users, query_len), generator=torch.Generator().manual_seed(s)).to(device)
        for s in range(scenarios)
    ]
    mask = torch.ones(users, query_len, dtype=torch.bool, device=device)

    def full() -> list[torch.Tensor]:
        return [model.anchor({**batch, "query_ids": q, "query_mask": mask}) for q in queries]

    def cached() -> list[torch.Tensor]:
        prefix = encode_prefix(model, batch)
        return [anchor_from_prefix(model, prefix, q, mask) for q in queries]

    worst = max(float((a - b).abs().max()) for a, b in zip(full(), cached()))
    t_full, t_cached = _median_seconds(full, repeats, device), _median_seconds(cached, repeats, device)
    prefix_len = int(encode_prefix(model, batch).lengths[0])
    suffix_len = query_len + 1  # + <USER_EMB>
    ideal = scenarios * (prefix_len + suffix_len) / (prefix_len + scenarios * suffix_len)
    speedup = t_full / t_cached
    return {
        "bench": "kv-cache",
        "model": {
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "kv_heads": kv_heads,
            "intermediate": intermediate,
            "params": sum(p.numel() for p in model.parameters()),
        },  # fmt: skip
        "users": users,
        "scenarios": scenarios,
        "prefix_tokens": prefix_len,
        "suffix_tokens": suffix_len,
        "seconds_no_cache": round(t_full, 4),
        "seconds_kv_cache": round(t_cached, 4),
        "speedup": round(speedup, 2),
        "ideal_speedup": round(ideal, 2),
        "fraction_of_ideal": round(speedup / ideal, 3),
        "max_abs_diff": worst,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "cpu": platform.machine(),
    }
