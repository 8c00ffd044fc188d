"""The experiment's stages, each skipped when its output is there: build + encode, QA synthesis, pretraining,
prompt tuning, embedding. Each is timed and prints one status line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from data_modules.contract.inputs import RawInputs
from data_modules.util.errors import DataError
from qanchor_pl.pipelines.experiment_config import ExperimentConfig
from qanchor_pl.pipelines.time_split import TimeSplit
from qanchor_pl.pipelines.variants import VARIANTS


def status(msg: str) -> None:
    """One stage line on stderr (silenced by ``qanchor --json``)."""
    if os.environ.get("QANCHOR_QUIET"):
        return
    print(f"[experiment] {msg}", file=sys.stderr, flush=True)


class Stage:
    """Times a stage and prints its one-line status."""

    def __init__(self, cfg: ExperimentConfig, name: str) -> None:
        self.cfg, self.name = cfg, name

    def __enter__(self) -> Stage:
        self.t0 = time.perf_counter()
        status(f"{self.name} ...")
        return self

    def __exit__(self, *exc) -> None:
        took = time.perf_counter() - self.t0
        self.cfg.timings[self.name] = round(self.cfg.timings.get(self.name, 0.0) + took, 1)
        status(f"{self.name} done in {took:.1f} s")


def quiet_libraries() -> None:
    """Keep the console to status lines: Lightning's per-run info lines would repeat 20+ times."""
    import logging
    import warnings

    import lightning  # noqa: F401  (its import sets these loggers to INFO; override after it)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\..*|torchdata\..*|torch\.utils\.data\..*")


# -- stages --------------------------------------------------------------------------------------
def build_and_encode(
    cfg: ExperimentConfig, root: Path, split: TimeSplit, inputs: RawInputs
) -> tuple[Path, Path]:
    """(pretraining data, evaluation data), built and encoded."""
    from data_modules.builder.runner import BuildConfig, build
    from data_modules.encode.dataset import encode_dataset

    pretrain_data, eval_data = root / "data-pretrain", root / "data"
    with Stage(cfg, "build + encode"):
        for data, cutoff in ((pretrain_data, split.pretrain_cutoff), (eval_data, split.eval_cutoff)):
            if not (data / "manifest.json").exists():
                build(BuildConfig(
                    raw=cfg.raw, out=str(data), cutoff=cutoff.isoformat() + "+00:00", timezone=cfg.timezone,
                    history_days=cfg.history_days, future_days=cfg.future_days, max_events=cfg.max_events,
                    modalities=cfg.modalities, split_seed=cfg.seed,
                    # the future anchor's targets: pretraining data only, never the evaluation data
                    future_events=data == pretrain_data,
                    # the pretraining build's benchmarks are never probed: no class check there
                    min_class_users=1 if data == eval_data else 0,
                ), inputs)  # fmt: skip
            # skipped when already encoded by this encoder; the second build copies the texts the
            # first one encoded, and every build copies those of earlier experiments (seeds)
            earlier = [Path(o) / d for o in cfg.reuse_from for d in ("data-pretrain", "data")]
            earlier += [pretrain_data] if data == eval_data else []
            encode_dataset(data, cfg.encoder, reuse=[o for o in earlier if (o / "manifest.json").exists()])
    return pretrain_data, eval_data


def synthesize_qa(cfg: ExperimentConfig, data: Path) -> None:
    """Generate the LLM-written D_uqa the pretraining reads, when ``qa_version`` names one."""
    from data_modules.dataset.manifest import Manifest
    from data_modules.supervision.qa_synth import QASynthConfig, run_qa_synth

    names = [n for n in cfg.qa_version.replace("both", "templated+llm").split("+") if n != "templated"]
    if not names or names[0] in Manifest.load(data).qa.get("versions", {}):
        return
    if cfg.qa_model is None:
        raise DataError(
            "--qa-model", f"qa_version '{cfg.qa_version}' needs generated answers", expected="an LLM folder"
        )
    settings = {}
    if cfg.qa_recipe:
        import yaml

        from qanchor_pl.recipes import find_recipe

        settings = yaml.safe_load(find_recipe(cfg.qa_recipe).read_text()) or {}
    settings.update(data=str(data), model=cfg.qa_model, version=names[0], seed=cfg.seed)
    with Stage(cfg, f"qa-synth {names[0]}"):
        run_qa_synth(QASynthConfig(**settings))


def pretrain_variant(cfg: ExperimentConfig, root: Path, data: Path, name: str) -> Path:
    from qanchor_pl.model.export import export_model
    from qanchor_pl.model.load import load_model
    from qanchor_pl.train.lightning_cli import run_pretrain

    export = root / "export" / name
    if (export / "qanchor_config.json").exists():
        return export
    run_dir = root / "pretrain" / name
    steps = {} if cfg.pretrain_steps is None else {"trainer.max_steps": cfg.pretrain_steps,
                                                   "model.contrastive.margin_warmup_steps": max(1, cfg.pretrain_steps // 4)}  # fmt: skip
    with Stage(cfg, f"pretrain {name}"):
        run_pretrain([cfg.pretrain_recipe], {
            "seed_everything": cfg.seed, "data.data": str(data), "data.qa_version": cfg.qa_version,
            "run_dir": str(run_dir), **steps, "trainer.enable_progress_bar": False, "ckpt_path": "last",
            **VARIANTS[name][1]})  # fmt: skip
        last = run_dir / "checkpoints" / "last.ckpt"
        export_model(load_model(last), export, overwrite=True, source=last)
    return export


def untrained_model(cfg: ExperimentConfig, root: Path, data: Path) -> Path:
    """The headline's model as initialised, never trained: for "prompt tuning without pretraining"."""
    from data_modules.loading.datamodule import UserUDataModule
    from qanchor_pl.model.config import DataInputs
    from qanchor_pl.model.export import export_model
    from qanchor_pl.recipes import find_recipe
    from qanchor_pl.train.pretrain import PretrainModule

    export = root / "export" / "no-pretrain"
    if not (export / "qanchor_config.json").exists():
        import lightning as L
        import yaml

        L.seed_everything(cfg.seed, verbose=False)
        model_args = yaml.safe_load(find_recipe(cfg.pretrain_recipe).read_text())["model"]
        for key, value in VARIANTS[cfg.headline][1].items():  # the headline's architecture
            if key.startswith("model.arch."):
                model_args.setdefault("arch", {})[key.removeprefix("model.arch.")] = value
        inputs = DataInputs(**UserUDataModule(str(data)).model_inputs())
        export_model(PretrainModule(**model_args, inputs=inputs).model, export, overwrite=True)
    return export


def tune_model(cfg: ExperimentConfig, root: Path, data: Path, model: Path, name: str) -> Path:
    from data_modules.contract.scenarios import load_scenarios
    from qanchor_pl.train.lightning_cli import run_tune

    run_dir = root / "tune" / name
    sizes = {**({"trainer.max_steps": cfg.tune_steps} if cfg.tune_steps is not None else {}),
             **({"data.batch_size": cfg.tune_batch} if cfg.tune_batch is not None else {})}  # fmt: skip
    with Stage(cfg, f"tune {name} (every scenario)"):
        for s in load_scenarios(data / "scenarios.json"):
            if (run_dir / s.name / "prompt" / "prompt.json").exists():
                continue
            run_tune([cfg.tune_recipe], {
                "seed_everything": cfg.seed, "model.pretrained": str(model), "data.data": str(data),
                "data.scenario": s.name, "run_dir": str(run_dir), **sizes, "trainer.limit_val_batches": 0,
                "trainer.enable_progress_bar": False, "ckpt_path": "last"})  # fmt: skip
    return run_dir


def embed_model(
    cfg: ExperimentConfig, root: Path, data: Path, model: Path, name: str, prompts: Path | None
) -> Path:
    from qanchor_pl.config import EmbedConfig
    from qanchor_pl.serve.embed import run_embed

    out = root / "embed" / name
    if not (out / "manifest.json").exists():
        with Stage(cfg, f"embed {name}"):
            run_embed(EmbedConfig(model=str(model), data=str(data), out=str(out), batch_size=128,
                                  prompts=str(prompts) if prompts else None))  # fmt: skip
    return out


def attention_analysis(cfg: ExperimentConfig, root: Path, data: Path, model: Path, prompts: Path) -> Path:
    """Which inputs the headline's embedding attends to per scenario, base and prompt-tuned (Fig. 7),
    over the validation carve: ``OUT/attention/``."""
    from qanchor_pl.config import AttentionConfig
    from qanchor_pl.eval.attention import run_attention

    out = root / "attention"
    if not (out / "attention.json").exists():
        with Stage(cfg, "attention (Fig. 7)"):
            run_attention(AttentionConfig(model=str(model), data=str(data), out=str(out), prompts=str(prompts),
                                          val_seed=cfg.seed))  # fmt: skip
    return out
