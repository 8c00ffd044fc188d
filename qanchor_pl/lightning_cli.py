"""``qanchor pretrain`` and ``qanchor tune``: LightningCLI with run directories.

Adds to the stock LightningCLI only what makes a run directory behave:
- ``--run_dir``: one folder per run, holding ``checkpoints/``, ``tensorboard/<version>/``, the saved
  config and the sample audit trail; it becomes ``trainer.default_root_dir`` (for tuning, one
  sub-folder per scenario);
- the TensorBoard version is ``$SLURM_JOB_ID`` under SLURM (a requeued job keeps its id, so its
  curves continue) and ``run`` otherwise; resuming writes into the same version;
- ``--ckpt_path last`` resumes; starting afresh in a run dir that already has a checkpoint is
  refused rather than silently mixing two runs' curves;
- checkpointing (``--checkpoint.*``) and throughput logging are always on; checkpoint files are
  written atomically;
- the tokenizer the data is tokenised with follows the model (``model.backbone`` when
  pretraining, ``model.pretrained`` when tuning).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from callbacks import SampleAuditLog, SlurmPreemption, ThroughputLogger
from qanchor_pl.checkpoint_io import AtomicCheckpointIO

# `qanchor pretrain ARGS` hands ARGS over explicitly; sys.argv keeps the full command so that DDP
# can re-launch it for the other ranks, which LightningCLI warns about.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def tokenizer_for(backbone: str) -> str | None:
    """None (the data set's own tokenizer) for the tiny backbone, else the backbone's."""
    return None if backbone == "tiny" else backbone


def checkpoint_dir(run_dir: str) -> str:
    return str(Path(run_dir) / "checkpoints")


def scenario_dir(run_dir: str, scenario: str) -> str:
    return str(Path(run_dir) / scenario)


def scenario_checkpoint_dir(run_dir: str, scenario: str) -> str:
    return checkpoint_dir(scenario_dir(run_dir, scenario))


def uses_deepspeed(strategy: Any) -> bool:
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return "deepspeed" in str(name).lower()


def tensorboard_version() -> str:
    return os.environ.get("SLURM_JOB_ID", "run")


class QAnchorCLI(LightningCLI):
    """LightningCLI with a run directory, resumable checkpoints and the project's callbacks."""

    default_run_dir = "runs/pretrain/default"
    checkpoint_defaults: dict[str, Any] = {
        "save_last": True,
        "save_top_k": 2,
        "monitor": "train/loss",
        "every_n_train_steps": 100,
        "filename": "step{step:07d}",
        "auto_insert_metric_name": False,
    }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", default=self.default_run_dir, help="folder of this run")
        parser.add_argument(
            "--ckpt_path", default=None, help="'last' to resume this run, or a checkpoint file"
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{k}": v for k, v in self.checkpoint_defaults.items()})
        parser.add_lightning_class_args(ThroughputLogger, "throughput")
        parser.add_lightning_class_args(SlurmPreemption, "preemption")
        self.link_run_dir(parser)

    def link_run_dir(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("run_dir", "trainer.default_root_dir")
        parser.link_arguments("run_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(
                save_dir=config["default_root_dir"], name="tensorboard", version=tensorboard_version()
            )
        plugins = list(config.get("plugins") or [])
        if not plugins and not uses_deepspeed(config.get("strategy")):
            plugins.append(AtomicCheckpointIO())  # DeepSpeed writes its own checkpoint folders
        if SLURMEnvironment.detect():  # pre-emption is handled at step boundaries by SlurmPreemption
            plugins.append(SLURMEnvironment(auto_requeue=False))
        config["plugins"] = plugins or None
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        """Refuse to start a fresh run on top of an existing one."""
        last = Path(self.config["checkpoint"]["dirpath"]) / "last.ckpt"
        if self.config.get("ckpt_path") is None and last.exists():
            raise SystemExit(
                f"error: {last} exists: pass --ckpt_path last to resume that run, or choose a new --run_dir"
            )

    def resume_path(self) -> str | None:
        """``--ckpt_path last`` means the newest of ``checkpoints/last.ckpt`` and the checkpoints
        Lightning writes on SLURM's pre-emption signal (``RUN/hpc_ckpt_N.ckpt``); None if neither
        exists yet (a first start with --ckpt_path last is a fresh start)."""
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path != "last":
            return ckpt_path
        candidates = [Path(self.config["checkpoint"]["dirpath"]) / "last.ckpt"]
        candidates += Path(self.config["trainer"]["default_root_dir"]).glob("hpc_ckpt_*.ckpt")
        existing = [p for p in candidates if p.exists()]
        return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None

    def fit(self) -> None:
        self.before_fit()
        self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=self.resume_path())


class PretrainCLI(QAnchorCLI):
    """``qanchor pretrain``: PretrainModule + UserUDataModule, with the per-step sample audit."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.backbone", "data.tokenizer", compute_fn=tokenizer_for)
        parser.add_lightning_class_args(SampleAuditLog, "sample_audit")


class TuneCLI(QAnchorCLI):
    """``qanchor tune``: PromptTuneModule + ScenarioDataModule, one sub-folder per scenario."""

    default_run_dir = "runs/tune/default"
    checkpoint_defaults = {
        **QAnchorCLI.checkpoint_defaults,
        "monitor": "val/auc",
        "mode": "max",
        "save_top_k": 1,
    }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        from qanchor_pl.model.load import tokenizer_of

        parser.link_arguments("model.pretrained", "data.tokenizer", compute_fn=tokenizer_of)

    def link_run_dir(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("run_dir", "data.scenario"), "trainer.default_root_dir", compute_fn=scenario_dir
        )
        parser.link_arguments(
            ("run_dir", "data.scenario"), "checkpoint.dirpath", compute_fn=scenario_checkpoint_dir
        )


def build_pretrain_cli(args: list[str] | None = None, extra_callbacks: list | None = None) -> PretrainCLI:
    """Parse ``args`` (a recipe via --config plus overrides) and build model, data and trainer."""
    from data_modules.datamodule import UserUDataModule
    from qanchor_pl.pretrain import PretrainModule

    return PretrainCLI(
        PretrainModule,
        UserUDataModule,
        args=args,
        run=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": list(extra_callbacks or [])},
    )


def run_pretrain(args: list[str] | None = None) -> PretrainCLI:
    """``qanchor pretrain``: build from the recipe and overrides, then fit (resuming with --ckpt_path)."""
    cli = build_pretrain_cli(args)
    cli.fit()
    return cli


def build_tune_cli(args: list[str]) -> TuneCLI:
    from data_modules.datamodule import ScenarioDataModule
    from qanchor_pl.tune import PromptTuneModule

    return TuneCLI(
        PromptTuneModule, ScenarioDataModule, args=args, run=False, save_config_kwargs={"overwrite": True}
    )


def run_tune(args: list[str]) -> list[TuneCLI]:
    """``qanchor tune [--all-scenarios] ARGS``: one scenario, or every scenario of the data set in turn."""
    if "--all-scenarios" not in args:
        cli = build_tune_cli(args)
        cli.fit()
        return [cli]
    args = [a for a in args if a != "--all-scenarios"]
    first = build_tune_cli(args)  # parses the recipe once to find the data set
    from data_modules.scenarios import load_scenarios

    names = [s.name for s in load_scenarios(Path(first.datamodule.data) / "scenarios.json")]
    clis = []
    for name in names:
        cli = build_tune_cli([*args, "--data.scenario", name])
        cli.fit()
        clis.append(cli)
    return clis
