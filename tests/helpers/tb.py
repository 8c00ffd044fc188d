"""Read TensorBoard scalars back from event files (as TensorBoard itself does)."""

from __future__ import annotations

from pathlib import Path


def scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] for every event file under ``logdir`` (one run folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def images(logdir: str | Path) -> list[str]:
    """The image tags written under ``logdir`` (one run folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0})
    acc.Reload()
    return list(acc.Tags()["images"])
