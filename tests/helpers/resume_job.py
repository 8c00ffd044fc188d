"""A real Lightning training job over UserUDataModule that records which users each step consumed.

Run as a script (DDP re-launches it per rank). Each rank writes ``{out}/seen-rank{R}.json``:
the list of per-step user-id lists this run consumed, and ``{out}/weights-rank{R}.pt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from data_modules.loading.datamodule import UserUDataModule


class RecordingModule(L.LightningModule):
    """Fits a linear probe on the tabular vector and records the users of every step.

    Batches come from ``dataloader_iter`` so Lightning does not prefetch one batch ahead of the
    step (which would make the saved loader state one batch ahead)."""

    def __init__(self, tabular_dim: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(tabular_dim, 1)
        self.seen: list[list[str]] = []

    def training_step(self, dataloader_iter):
        batch, _, _ = next(dataloader_iter)
        self.seen.append(list(batch["user_id"]))
        ev = sum(v.float().mean() for v in batch["events"].values())
        return self.head(batch["tabular"]).pow(2).mean() + 0.0 * ev

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length-window", type=int, default=0)
    args = p.parse_args()

    L.seed_everything(0, workers=True)
    dm = UserUDataModule(args.data, batch_size=args.batch_size, num_workers=args.workers, buffer_size=64,
                         length_window=args.length_window)  # fmt: skip
    model = RecordingModule(dm.tabular_dim)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.max_steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0)
        ],
    )
    trainer.fit(model, datamodule=dm, ckpt_path="last" if args.resume else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = trainer.global_rank
    (out / f"seen-rank{rank}.json").write_text(json.dumps(model.seen))
    torch.save(model.head.state_dict(), out / f"weights-rank{rank}.pt")


if __name__ == "__main__":
    main()
