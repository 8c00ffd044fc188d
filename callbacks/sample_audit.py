"""A per-rank audit trail of which users every training step consumed.

One JSON line per step in ``{dirpath}/samples-rank{R}.jsonl``: the step, the number of users and a
digest of their ids (or the ids themselves). After a resume, lines of steps that are redone are
dropped first, so the file always describes the samples behind the current weights. Comparing two
runs' files answers "did the resumed run see exactly what the uninterrupted one saw?" and "which
users were in the step where the loss spiked?".
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from data_modules.util.atomic import atomic_path
from data_modules.util.hashing import stable_hexdigest


def digest(user_ids: list[str]) -> str:
    return stable_hexdigest("\n".join(user_ids), 12)


class SampleAuditLog(L.Callback):
    """Writes the audit trail (see module docstring).

    Args:
        dirpath: folder for the files; None = ``trainer.default_root_dir``.
        ids: store the user ids themselves, not only their digest.
    """

    def __init__(self, dirpath: str | None = None, ids: bool = False) -> None:
        self.dirpath = dirpath
        self.ids = ids
        self._file = None
        self._step = 0

    def path(self, trainer: L.Trainer) -> Path:
        root = Path(self.dirpath or trainer.default_root_dir)
        return root / f"samples-rank{trainer.global_rank}.jsonl"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # drop the steps this (resumed) run is about to redo
            lines = path.read_text().splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] < trainer.global_step]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(f"{ln}\n" for ln in kept))
        self._file = path.open("a")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        users = list(getattr(pl_module, "step_users", []))
        row = {"step": self._step, "n": len(users), "digest": digest(users)}
        if self.ids:
            row["users"] = users
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
