"""Checkpoint files written atomically in place: a temp file in the same folder, fsync, rename.

Lightning's default writes through an fsspec transaction whose temp file lives in the system temp
folder; when that is another filesystem the final move is a copy, and a job killed mid-copy
(preemption, SIGKILL) leaves a truncated ``last.ckpt``. A same-folder rename cannot be torn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data_modules.util.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are all-or-nothing on local filesystems."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        if "://" in str(path):  # object stores: keep Lightning's own handling
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
