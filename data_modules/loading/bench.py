"""``qanchor bench data``: samples per second and peak memory of the streaming loader."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

from data_modules.util.errors import DataError
from data_modules.util.memory import PeakRSS


@dataclass
class BenchDataConfig:
    """Samples per second and peak memory of the streaming pretraining loader."""

    data: str
    """a built and encoded data set"""
    workers: int = 0
    """loader worker processes"""
    batch_size: int = 32
    """users per batch"""
    batches: int = 0
    """batches to time; 0 = one full epoch"""
    max_events: str | None = None
    """loader-side caps (<= the build's), e.g. 'paper'"""
    tokenizer: str | None = None
    """default: the data set's own tokenizer"""
    length_window: int = 0
    """length-balanced batches: batches per length-sorting window (0 = off)"""


def anchor_slots(batch: dict) -> int:
    """Positions of a batch's packed anchor sequence, events + query + answer per user padded to the
    batch's longest (the model's few structural tokens, the same for every user, left out)."""
    per_user = sum(m.sum(1) for m in batch["event_mask"].values()) + batch["query_mask"].sum(1)
    per_user = per_user + batch["answer_mask"].sum(1)
    return int(per_user.max()) * len(per_user)


def bench_data(cfg: BenchDataConfig) -> dict:
    """Time one epoch (or ``batches`` batches) of the pretraining loader after one warm-up batch."""
    data, workers, batch_size, batches = cfg.data, cfg.workers, cfg.batch_size, cfg.batches
    max_events, tokenizer = cfg.max_events, cfg.tokenizer
    from data_modules.loading.datamodule import UserStreamLoader, UserUDataModule  # torch: only when run

    dm = UserUDataModule(
        str(data), tokenizer=tokenizer, batch_size=batch_size, num_workers=workers, max_events=max_events,
        length_window=cfg.length_window,
    )  # fmt: skip
    dataset = dm.make_dataset()
    loader = UserStreamLoader(dataset, num_workers=workers)
    with PeakRSS() as mem:
        it = iter(loader)
        first = next(it, None)
        if first is None:
            raise DataError(data, "no users to load: nothing to time", expected="a data set with users")
        t0 = time.perf_counter()
        n_samples = n_batches = n_tokens = n_events = n_slots = 0
        for batch in it:
            n_batches += 1
            n_samples += len(batch["user_id"])
            n_tokens += int(batch["query_mask"].sum() + batch["answer_mask"].sum())
            n_events += int(sum(m.sum() for m in batch["event_mask"].values()))
            n_slots += anchor_slots(batch)
            if batches and n_batches >= batches:
                break
        seconds = time.perf_counter() - t0
    if not n_batches:
        raise DataError(
            data, f"one batch of {batch_size} holds every user: nothing to time after the warm-up batch",
            expected="more users than --batch_size, or a smaller --batch_size",
        )  # fmt: skip
    per_sample_events = {m: int(v.shape[1]) for m, v in first["events"].items()}
    return {
        "bench": "data",
        "data": str(data),
        "workers": workers,
        "batch_size": batch_size,
        "caps": dm.caps,
        "event_dim": int(next(iter(first["events"].values())).shape[-1]),
        "first_batch_event_tokens": per_sample_events,
        "batches": n_batches,
        "samples": n_samples,
        "seconds": round(seconds, 3),
        "samples_per_s": round(n_samples / seconds, 1),
        "samples_per_s_per_worker": round(n_samples / seconds / max(workers, 1), 1),
        "events_per_sample": round(n_events / max(n_samples, 1), 1),
        "tokens_per_sample": round(n_tokens / max(n_samples, 1), 1),
        "length_window": cfg.length_window,
        # of the packed anchor sequence [events][query][answer]: what a batch pads to its longest member
        "padding_fraction": round(1.0 - (n_events + n_tokens) / max(n_slots, 1), 4),
        "peak_rss_mb": round(mem.peak / 2**20, 1),
        "cpu": platform.processor() or platform.machine(),
    }
