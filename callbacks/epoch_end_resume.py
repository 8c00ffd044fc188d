"""Exact resume from a checkpoint written after an epoch ended (``on_train_end``'s ``last.ckpt``).

A checkpoint saved once the fit loop has closed an epoch (every epoch counter equal: ready,
started, processed, completed) still holds that epoch's batch counters. Lightning 2.6 restores
them into the next epoch, so the resumed run ends that epoch after one batch and starts the one
after it: the data of a run resumed from the ``last.ckpt`` of a run that stopped at an epoch's end
(``max_steps`` there, or a pre-emption) was shuffled as the wrong epoch. This callback clears the
batch counters of such a checkpoint before Lightning restores its loops, which is the state of an
epoch not yet begun. Checkpoints saved inside an epoch are left as they are.
"""

from __future__ import annotations

from typing import Any

import lightning as L


def clear_finished_epoch_batches(checkpoint: dict[str, Any]) -> bool:
    """Reset the batch counters of an epoch the checkpoint records as finished; True if it did."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if not fit_loop or "epoch_progress" not in fit_loop or "epoch_loop.batch_progress" not in fit_loop:
        return False
    epoch = fit_loop["epoch_progress"]["current"]
    batches = fit_loop["epoch_loop.batch_progress"]
    if len({epoch["ready"], epoch["started"], epoch["processed"], epoch["completed"]}) != 1:
        return False  # saved inside an epoch (or at its end hooks): Lightning resumes that itself
    if not any(batches["current"].values()):
        return False
    batches["current"] = {name: 0 for name in batches["current"]}
    batches["is_last_batch"] = False
    return True


class EpochEndResume(L.Callback):
    """Make a resume from a checkpoint written after an epoch ended start the next epoch cleanly."""

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        clear_finished_epoch_batches(checkpoint)  # runs before Lightning restores the loops
