"""Pre-emption under SLURM: checkpoint at a step boundary, requeue, resume exactly.

SLURM announces the end of a job with SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``, or
``scancel --signal=USR1 JOB``). Lightning's own handler saves ``hpc_ckpt_N.ckpt`` from inside the
signal handler, i.e. at an arbitrary point of a training step, and a run resumed from it was seen
here to log one step twice. This callback only raises a flag in the handler; at the end of the
current step all ranks agree (one scalar all-reduce) and save ``RUN/hpc_ckpt_N.ckpt`` together,
and training stops. That checkpoint stays the run's newest: the stopping run writes no
``last.ckpt`` after it (Lightning's ``on_train_end`` would, with its epoch marked finished). Once
the run has ended, its loggers have flushed the last step and every rank has got there, rank 0
runs ``scontrol requeue``: the requeue kills the job, and a kill right after the checkpoint had
lost that step's TensorBoard point (seen in CI). The requeued job resumes with ``--ckpt_path
last`` (the newest checkpoint) under the same job id. The CLI turns Lightning's auto-requeue off
when this callback is active.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint


def under_slurm_batch() -> bool:
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


class SlurmPreemption(L.Callback):
    """Checkpoint-and-requeue on ``signum`` at the next step boundary (active only in SLURM jobs).

    Args:
        signum: the signal SLURM is asked to send (``--signal=SIGUSR1@SECONDS``).
        requeue: run ``scontrol requeue $SLURM_JOB_ID`` after saving.
    """

    def __init__(self, signum: int = int(signal.SIGUSR1), requeue: bool = True) -> None:
        self.signum = int(signum)
        self.requeue = requeue
        self._received = False
        self.saved: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and under_slurm_batch():
            signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._received = True

    def _agreed(self, trainer: L.Trainer, device: torch.device) -> bool:
        flag = torch.tensor([1.0 if self._received else 0.0], device=device)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.saved is not None or not under_slurm_batch() or not self._agreed(trainer, pl_module.device):
            return
        root = Path(trainer.default_root_dir)
        n = 1 + max([int(p.stem.split("_")[-1]) for p in root.glob("hpc_ckpt_*.ckpt")] or [0])
        self.saved = root / f"hpc_ckpt_{n}.ckpt"
        trainer.save_checkpoint(self.saved)  # every rank takes part (DDP/DeepSpeed collectives)
        for callback in trainer.checkpoint_callbacks:  # nothing newer than the pre-emption checkpoint
            if isinstance(callback, ModelCheckpoint):
                callback.save_last = False
                callback._last_global_step_saved = trainer.global_step  # skips the epoch-end save
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.saved is None:
            return
        for logger in trainer.loggers:
            logger.save()  # the last step's metrics reach the disk before the requeue's kill
        trainer.strategy.barrier("slurm-preemption")  # every rank has written its last step
        if trainer.is_global_zero and self.requeue:
            job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
            if "SLURM_ARRAY_TASK_ID" in os.environ:
                job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            print(
                f"pre-emption: saved {self.saved} at step {trainer.global_step}; requeue {job}: rc {done.returncode} {done.stderr.strip()}",
                flush=True,
            )
