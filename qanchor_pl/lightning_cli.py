"""``qanchor pretrain``: LightningCLI over PretrainModule + UserUDataModule.

Adds to the stock LightningCLI only what makes a run directory behave:
- ``--run_dir``: one folder per run, holding ``checkpoints/``, ``tensorboard/<version>/``, the saved
  config and the sample audit trail; it becomes ``trainer.default_root_dir``;
- the TensorBoard version is ``$SLURM_JOB_ID`` under SLURM (a requeued job keeps its id, so its
  curves continue) and ``run`` otherwise; resuming writes into the same version;
- ``--ckpt_path last`` resumes; starting afresh in a run dir that already has a checkpoint is
  refused rather than silently mixing two runs' curves;
- checkpointing (``--checkpoint.*``), throughput logging and the sample audit are always on;
- ``model.backbone`` decides the tokenizer the data is tokenised with (the data set's own for
  ``tiny``, the backbone's otherwise).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import SampleAuditLog, ThroughputLogger
from qanchor_pl.checkpoint_io import AtomicCheckpointIO


def tokenizer_for(backbone: str) -> str | None:
    """None (the data set's own tokenizer) for the tiny backbone, else the backbone's."""
    return None if backbone == "tiny" else backbone


def checkpoint_dir(run_dir: str) -> str:
    return str(Path(run_dir) / "checkpoints")


def tensorboard_version() -> str:
    return os.environ.get("SLURM_JOB_ID", "run")


class QAnchorCLI(LightningCLI):
    """LightningCLI with a run directory, resumable checkpoints and the project's callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", default="runs/pretrain/default", help="folder of this run")
        parser.add_argument(
            "--ckpt_path", default=None, help="'last' to resume this run, or a checkpoint file"
        )
        parser.link_arguments("run_dir", "trainer.default_root_dir")
        parser.link_arguments("model.backbone", "data.tokenizer", compute_fn=tokenizer_for)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 2,
                "checkpoint.monitor": "train/loss",
                "checkpoint.every_n_train_steps": 100,
                "checkpoint.filename": "step{step:07d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("run_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.add_lightning_class_args(ThroughputLogger, "throughput")
        parser.add_lightning_class_args(SampleAuditLog, "sample_audit")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(
                save_dir=config["default_root_dir"], name="tensorboard", version=tensorboard_version()
            )
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        """Refuse to start a fresh run on top of an existing one."""
        ckpt_path = self.config.get("ckpt_path")
        last = Path(checkpoint_dir(self.config["run_dir"])) / "last.ckpt"
        if ckpt_path is None and last.exists():
            raise SystemExit(
                f"error: {last} exists: pass --ckpt_path last to resume that run, or choose a new --run_dir"
            )


def build_pretrain_cli(args: list[str] | None = None, extra_callbacks: list | None = None) -> QAnchorCLI:
    """Parse ``args`` (a recipe via --config plus overrides) and build model, data and trainer."""
    from data_modules.datamodule import UserUDataModule
    from qanchor_pl.pretrain import PretrainModule

    # `qanchor pretrain ARGS` hands ARGS over explicitly; sys.argv keeps the full command so that
    # DDP can re-launch it for the other ranks, which LightningCLI warns about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return QAnchorCLI(
        PretrainModule,
        UserUDataModule,
        args=args,
        run=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": list(extra_callbacks or [])},
    )


def run_pretrain(args: list[str] | None = None) -> QAnchorCLI:
    """``qanchor pretrain``: build from the recipe and overrides, then fit (resuming with --ckpt_path)."""
    cli = build_pretrain_cli(args)
    cli.before_fit()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
    return cli
