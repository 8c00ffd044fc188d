"""``qanchor pretrain`` and ``qanchor tune``: LightningCLI with run directories.

Adds to the stock LightningCLI only what makes a run directory behave:
- ``--run_dir``: one folder per run, holding ``checkpoints/``, ``tensorboard/<version>/``, the saved
  config and the sample audit trail; it becomes ``trainer.default_root_dir`` (for tuning, one
  sub-folder per scenario);
- the TensorBoard version is ``$SLURM_JOB_ID`` under SLURM (a requeued job keeps its id, so its
  curves continue) and ``run`` otherwise; resuming writes into the same version;
- ``--ckpt_path last`` resumes (on an empty run dir it says "no checkpoint in DIR: starting
  fresh"); starting afresh in a run dir that already has a checkpoint is refused rather than
  silently mixing two runs' curves;
- a plain-text step log on rank 0 (``--step_log.every_n_steps``), for SLURM log files;
- TensorBoard's HPARAMS view gets real metrics at the end of a run (no placeholder ``hp_metric``);
- ``--optimizer`` alone swaps the optimizer and keeps the warmup-cosine schedule;
- checkpointing (``--checkpoint.*``) and throughput logging are always on; checkpoint files are
  written atomically;
- the tokenizer the data is tokenised with follows the model (``model.arch.backbone`` when
  pretraining, ``model.pretrained`` when tuning).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from callbacks import (
    EpochEndResume,
    HParamsWithMetrics,
    SampleAuditLog,
    SlurmPreemption,
    StepLog,
    ThroughputLogger,
)
from callbacks.hparams import final_metrics
from data_modules.util.lock import FolderLock, is_rank_zero
from qanchor_pl.train.checkpoint_io import AtomicCheckpointIO

# `qanchor pretrain ARGS` hands ARGS over explicitly; sys.argv keeps the full command so that DDP
# can re-launch it for the other ranks, which LightningCLI warns about.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def tokenizer_for(backbone: str) -> str | None:
    """None (the data set's own tokenizer) for the tiny backbone, else the backbone's."""
    return None if backbone == "tiny" else backbone


def checkpoint_dir(run_dir: str) -> str:
    return str(Path(run_dir) / "checkpoints")


def scenario_dir(run_dir: str, scenario: str) -> str:
    from data_modules.contract.names import check_name

    return str(Path(run_dir) / check_name(scenario, "--data.scenario"))


def scenario_checkpoint_dir(run_dir: str, scenario: str) -> str:
    return checkpoint_dir(scenario_dir(run_dir, scenario))


def uses_deepspeed(strategy: Any) -> bool:
    name = strategy if isinstance(strategy, str) else type(strategy).__name__
    return "deepspeed" in str(name).lower()


def tensorboard_version(suffix: str = "") -> str:
    """``$SLURM_JOB_ID`` (a requeued job keeps it, so its curves continue) or ``run``, + ``suffix``."""
    return os.environ.get("SLURM_JOB_ID", "run") + suffix


def _cli_kwargs() -> dict[str, Any]:
    """What every QAnchorCLI is built with: parse only (the caller fits), overwrite the saved config,
    and a bad option or value raises (the front door prints it as one line, exit code 2) rather
    than printing the usage and exiting."""
    return {
        "run": False,
        "save_config_kwargs": {"overwrite": True},
        "parser_kwargs": {"exit_on_error": False},
    }


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the CLI reports it as one line, exit code 2)."""


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint holds, or None if it does not load (a DeepSpeed checkpoint
    folder counts as loadable at step 0: it is checked when Lightning loads it)."""
    import torch

    if path.is_dir():
        return 0
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(ckpt.get("global_step", 0))
    except Exception:  # noqa: BLE001 - truncated zip, bad pickle, I/O error: all "does not load"
        return None


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
        parser.add_lightning_class_args(StepLog, "step_log")
        self.link_run_dir(parser)

    def link_run_dir(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("run_dir", "trainer.default_root_dir")
        parser.link_arguments("run_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(
                save_dir=config["default_root_dir"], name="tensorboard",
                version=tensorboard_version(self.version_suffix()), default_hp_metric=False,
            )  # fmt: skip
        plugins = list(config.get("plugins") or [])
        if not plugins and not uses_deepspeed(config.get("strategy")):
            plugins.append(AtomicCheckpointIO())  # DeepSpeed writes its own checkpoint folders
        if SLURMEnvironment.detect():  # pre-emption is handled at step boundaries by SlurmPreemption
            plugins.append(SLURMEnvironment(auto_requeue=False))
        config["plugins"] = plugins or None
        return super()._instantiate_trainer(config, [*callbacks, HParamsWithMetrics(), EpochEndResume()])

    def version_suffix(self) -> str:
        return ""

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """``--optimizer`` without ``--lr_scheduler``: the module builds that optimizer and keeps
        its own warmup-cosine schedule (stock LightningCLI would drop the schedule silently)."""
        parser = self._parser(subcommand)
        given = [k for k in parser._optimizers if self._get(self.config_init, k)]
        scheduled = [k for k in parser._lr_schedulers if self._get(self.config_init, k)]
        if len(given) == 1 and not scheduled:
            from lightning.pytorch.cli import _global_add_class_path

            cls = parser._optimizers[given[0]][0]
            init = self._get(self.config_init, given[0])
            self.model.optimizer_init = init if isinstance(cls, tuple) else _global_add_class_path(cls, init)
            return
        super()._add_configure_optimizers_method_to_model(subcommand)

    def before_fit(self) -> None:
        """Refuse to start a fresh run on top of an existing one."""
        found = sorted(Path(self.config["checkpoint"]["dirpath"]).glob("last*.ckpt"))
        if self.config.get("ckpt_path") is None and found:
            raise RunFolderError(
                f"{found[0]} exists: pass --ckpt_path last to resume that run, or choose a new --run_dir"
            )

    def resume_path(self) -> str | None:
        """``--ckpt_path last`` means the newest checkpoint of this run that loads: ``last.ckpt``, a
        versioned ``last-vN.ckpt``, the step checkpoints, and those Lightning writes on SLURM's
        pre-emption signal (``RUN/hpc_ckpt_N.ckpt``), newest step first. An unreadable one (a
        truncated file) is passed over, and said so. None if there is none yet (a first start with
        --ckpt_path last is a fresh start)."""
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path != "last":
            return ckpt_path
        root = Path(self.config["trainer"]["default_root_dir"])
        candidates = [
            *Path(self.config["checkpoint"]["dirpath"]).glob("*.ckpt"),
            *root.glob("hpc_ckpt_*.ckpt"),
        ]
        say = self.trainer.is_global_zero
        if not candidates:
            if say:
                print(f"no checkpoint in {root}: starting fresh", file=sys.stderr, flush=True)
            return None
        readable, broken = [], []
        for path in candidates:
            step = checkpoint_step(path)
            (broken if step is None else readable).append((step, path.stat().st_mtime, path))
        if not readable:
            raise RunFolderError(
                f"no checkpoint in {root} loads ({len(broken)} unreadable): start a new --run_dir"
            )
        for _, _, path in broken:
            if say:
                print(
                    f"checkpoint {path} does not load (truncated?): passed over", file=sys.stderr, flush=True
                )
        step, _, best = max(readable, key=lambda t: (t[0], t[1]))
        if broken and say:
            print(f"resuming from {best} (step {step})", file=sys.stderr, flush=True)
        return str(best)

    def run_lock(self) -> contextlib.AbstractContextManager:
        """One run per run folder: rank 0 holds ``RUN/.lock`` while it trains."""
        if not is_rank_zero():
            return contextlib.nullcontext()
        root = Path(self.config["trainer"]["default_root_dir"])
        return FolderLock(root / ".lock", f"run folder {root}")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The module and the data both have a `seed`; Lightning refuses to merge differing values
        # (`--data.seed 1` crashed), on every fit of this CLI's objects (bench train's too).
        # HParamsWithMetrics logs the data's hparams, prefixed with `data.`.
        self.datamodule._log_hyperparams = False

    def fit(self) -> None:
        with self.run_lock():
            self.before_fit()
            self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=self.resume_path())

    def summary(self) -> dict[str, Any]:
        """The one JSON line a command ends with."""
        trainer = self.trainer
        return {
            "run_dir": self.config["trainer"]["default_root_dir"],
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            **{k.removeprefix("hp/"): round(v, 6) for k, v in final_metrics(trainer).items()},
        }


class PretrainCLI(QAnchorCLI):
    """``qanchor pretrain``: PretrainModule + UserUDataModule, with the per-step sample audit."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.arch.backbone", "data.tokenizer", compute_fn=tokenizer_for)
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
        parser.add_argument(
            "--all_scenarios", type=bool, default=False,
            help="tune every scenario of the data set in turn, one sub-folder of --run_dir each",
        )  # fmt: skip

    def version_suffix(self) -> str:
        """Tuning runs of several seeds share a scenario folder's tensorboard/: one version each."""
        return f"-seed{self.config.get('seed_everything')}"

    def link_run_dir(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            ("run_dir", "data.scenario"), "trainer.default_root_dir", compute_fn=scenario_dir
        )
        parser.link_arguments(
            ("run_dir", "data.scenario"), "checkpoint.dirpath", compute_fn=scenario_checkpoint_dir
        )


def recipe_args(recipes: list[str], overrides: dict[str, Any] | None = None) -> list[str]:
    """The LightningCLI arguments of recipes (names or files, composed in order) + dotted overrides.
    The one place Python values become command-line text (as YAML, which jsonargparse parses)."""
    import yaml

    from qanchor_pl.recipes import find_recipe

    args = [a for r in recipes for a in ("--config", str(find_recipe(r)))]
    for key, value in (overrides or {}).items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        args += [f"--{key}", text.removesuffix("\n...").strip()]
    return args


def build_pretrain_cli(args: list[str] | None = None, extra_callbacks: list | None = None) -> PretrainCLI:
    """Parse ``args`` (a recipe via --config plus overrides) and build model, data and trainer."""
    from data_modules.loading.datamodule import UserUDataModule
    from qanchor_pl.train.pretrain import PretrainModule

    return PretrainCLI(
        PretrainModule,
        UserUDataModule,
        args=args,
        trainer_defaults={"callbacks": list(extra_callbacks or [])},
        **_cli_kwargs(),
    )


def run_pretrain(recipes: list[str], overrides: dict[str, Any] | None = None) -> PretrainCLI:
    """Pretrain from ``recipes`` (composed in order) and dotted ``overrides``, resuming with
    ``{"ckpt_path": "last"}``: the Python door of ``qanchor pretrain``."""
    cli = build_pretrain_cli(recipe_args(recipes, overrides))
    cli.fit()
    return cli


def run_pretrain_cli(argv: list[str]) -> None:
    """``qanchor pretrain ARGS``: fit, then the summary JSON line on rank 0."""
    cli = build_pretrain_cli(argv)
    cli.fit()
    _print_summary([cli])


def _print_summary(clis: list[QAnchorCLI]) -> None:
    import json

    if clis and clis[0].trainer.is_global_zero:
        summary = clis[0].summary() if len(clis) == 1 else {"runs": [c.summary() for c in clis]}
        print(json.dumps(summary), file=sys.__stdout__, flush=True)


def build_tune_cli(args: list[str]) -> TuneCLI:
    from data_modules.loading.datamodule import ScenarioDataModule
    from qanchor_pl.train.tune import PromptTuneModule

    return TuneCLI(PromptTuneModule, ScenarioDataModule, args=args, **_cli_kwargs())


def tune_from_args(args: list[str]) -> list[TuneCLI]:
    """One scenario, or with ``--all_scenarios true`` every scenario of the data set in turn."""
    first = build_tune_cli(args)
    if not first.config.get("all_scenarios"):
        first.fit()
        return [first]
    from data_modules.contract.scenarios import load_scenarios

    names = [s.name for s in load_scenarios(Path(first.datamodule.data) / "scenarios.json")]
    clis = []
    for name in names:
        cli = build_tune_cli([*args, "--all_scenarios", "false", "--data.scenario", name])
        cli.fit()
        clis.append(cli)
    return clis


def run_tune(recipes: list[str], overrides: dict[str, Any] | None = None) -> list[TuneCLI]:
    """The Python door of ``qanchor tune`` (``{"all_scenarios": True}`` for every scenario)."""
    return tune_from_args(recipe_args(recipes, overrides))


def run_tune_cli(argv: list[str]) -> None:
    """``qanchor tune ARGS``: fit one scenario or all, then the summary JSON line."""
    _print_summary(tune_from_args(argv))
