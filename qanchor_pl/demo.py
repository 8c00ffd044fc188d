"""``qanchor demo``: the whole pipeline on the synthetic world, ending in the paper's table shapes.

synth -> build -> encode (MiniLM) -> pretrain (base + ablations) -> export -> tune every scenario
(base, and an untrained model for "w/o pretraining") -> embed (KV cache) -> evaluate.

Time split, as in production: the world has 150 days. Pretraining data is built at day 90 (history
days 0-90, D_future answers from days 90-120); the evaluation data at day 120 (history days 30-120,
scenario labels from days 120-150). Built on one cutoff, D_future would state the very events the
labels count, for the probe's test users too, and the table would measure memorised futures.

Everything lands under one folder (default ``runs/demo``) whose TensorBoard runs are named by what
they are (``pretrain/base/...``, ``pretrain/no-ntp/...``, ``tune/base/Takeout/...``), so
``tensorboard --logdir runs/demo`` compares them side by side. Each stage prints one status line;
stage timings close the run. Every stage is skipped when its output exists, so a re-run resumes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRETRAIN_RECIPE = "recipes/pretrain/tiny-cpu.yaml"
TUNE_RECIPE = "recipes/tune/tiny-cpu.yaml"

# name -> (table row, overrides of the pretraining recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("Q-Anchor (base)", []),
    "no-contrastive": ("w/o contrastive", ["--model.contrastive.enabled", "false"]),
    "no-ntp": ("w/o NTP", ["--model.ntp_weight", "0"]),
    "no-margin": ("w/o margin filter", ["--model.contrastive.margin", "null"]),
    "no-structural": (
        "w/o structural tokens",
        ["--model.user_marker", "false", "--model.modality_markers", "false"],
    ),
}

# evaluate's baseline name -> table row
BASELINE_ROWS = {
    "minilm": "General text embedding (MiniLM, profile text)",
    "mean-events": "Mean event vectors + tabular",
    "event-counts": "Reference: bag of events (log counts) + tabular",
}
BASE, TUNED, UNPRETRAINED = "Q-Anchor (base)", "Q-Anchor (prompt-tuned)", "w/o pretraining (prompt-tuned)"
# (A, B): the report gives a paired-bootstrap interval of Avg AUC(A) - AUC(B)
COMPARISONS = [
    (BASE, "minilm"), (BASE, "mean-events"), (TUNED, BASE), (TUNED, UNPRETRAINED),
    *((VARIANTS[v][0], BASE) for v in VARIANTS if v != "base"),
]  # fmt: skip


@dataclass
class DemoConfig:
    """Sizes of one demo run (``fast`` for the end-to-end test)."""

    out: str = "runs/demo"
    users: int = 4000
    pretrain_steps: int = 200
    tune_steps: int = 70
    tune_batch: int = 64
    profile_tokens: int = 256  # all-MiniLM-L6-v2's own limit: the baseline sees all it can
    seed: int = 0
    variants: tuple[str, ...] = tuple(VARIANTS)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fast(cls, out: str) -> DemoConfig:
        return cls(out=out, users=800, pretrain_steps=30, tune_steps=10, tune_batch=32)

    @classmethod
    def from_options(cls, out: str, *, fast: bool = False, **overrides: int | None) -> DemoConfig:
        """The default (or ``fast``) sizes with the given non-None fields replaced."""
        cfg = cls.fast(out) if fast else cls(out=out)
        for key, value in overrides.items():
            if key not in cls.__dataclass_fields__ or key in ("out", "timings"):
                raise ValueError(f"unknown demo option {key!r}")
            if value is not None:
                setattr(cfg, key, value)
        return cfg


def quiet_libraries() -> None:
    """Keep the demo's console to its status lines and progress bars: Lightning's per-run info
    lines and warnings would repeat 20+ times (one per run) and bury them."""
    import logging
    import warnings

    import lightning  # noqa: F401  (its import sets these loggers to INFO; override after it)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\..*|torchdata\..*|torch\.utils\.data\..*")


def status(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


class Stage:
    """Times a stage and prints its one-line status."""

    def __init__(self, cfg: DemoConfig, name: str) -> None:
        self.cfg, self.name = cfg, name

    def __enter__(self) -> Stage:
        self.t0 = time.perf_counter()
        status(f"{self.name} ...")
        return self

    def __exit__(self, *exc) -> None:
        dt = time.perf_counter() - self.t0
        self.cfg.timings[self.name] = round(self.cfg.timings.get(self.name, 0.0) + dt, 1)
        status(f"{self.name} done in {dt:.1f} s")


def _data(cfg: DemoConfig, root: Path) -> tuple[Path, Path]:
    """(pretraining data at day 90, evaluation data at day 120) of one synthetic world."""
    import datetime as dt

    from data_modules.build import BuildConfig, build
    from data_modules.encode import encode_dataset
    from data_modules.synth import FUTURE_DAYS, HISTORY_DAYS, START, write_world

    raw, pretrain_data, eval_data = root / "raw", root / "data-pretrain", root / "data"
    pretrain_cutoff = START + dt.timedelta(days=HISTORY_DAYS)
    with Stage(cfg, "synth + build + encode"):
        if not (raw / "scenarios.json").exists():
            write_world(raw, n_users=cfg.users, seed=cfg.seed, lead_days=FUTURE_DAYS)
        for data, cutoff in ((pretrain_data, pretrain_cutoff), (eval_data, None)):
            if not (data / "manifest.json").exists():
                build(BuildConfig(raw=str(raw), out=str(data), cutoff=cutoff.isoformat() if cutoff else None))
            encode_dataset(data, "minilm")  # skipped when already encoded by MiniLM
    return pretrain_data, eval_data


def _pretrain(cfg: DemoConfig, root: Path, data: Path, name: str) -> Path:
    from qanchor_pl.lightning_cli import run_pretrain
    from qanchor_pl.model.export import export_model
    from qanchor_pl.model.load import load_model

    export = root / "export" / name
    if (export / "qanchor_config.json").exists():
        return export
    run_dir = root / "pretrain" / name
    with Stage(cfg, f"pretrain {name}"):
        run_pretrain(["--config", PRETRAIN_RECIPE, "--seed_everything", str(cfg.seed), "--data.data", str(data),
                      "--run_dir", str(run_dir), "--trainer.max_steps", str(cfg.pretrain_steps),
                      "--trainer.enable_progress_bar", "false",
                      "--model.contrastive.margin_warmup_steps", str(max(1, cfg.pretrain_steps // 4)),
                      "--ckpt_path", "last", *VARIANTS[name][1]])  # fmt: skip
        export_model(load_model(run_dir / "checkpoints" / "last.ckpt"), export, overwrite=True)
    return export


def _untrained(cfg: DemoConfig, root: Path, data: Path) -> Path:
    """The base model as initialised, never trained: for "prompt tuning without pretraining"."""
    from data_modules.datamodule import UserUDataModule
    from qanchor_pl.model.config import DataInputs
    from qanchor_pl.model.export import export_model
    from qanchor_pl.pretrain import PretrainModule

    export = root / "export" / "no-pretrain"
    if not (export / "qanchor_config.json").exists():
        import lightning as L
        import yaml

        L.seed_everything(cfg.seed, verbose=False)
        model_args = yaml.safe_load(Path(PRETRAIN_RECIPE).read_text())["model"]
        inputs = DataInputs(**UserUDataModule(str(data)).model_inputs())
        export_model(PretrainModule(**model_args, inputs=inputs).model, export, overwrite=True)
    return export


def _tune(cfg: DemoConfig, root: Path, data: Path, model: Path, name: str) -> Path:
    from qanchor_pl.lightning_cli import run_tune

    run_dir = root / "tune" / name
    with Stage(cfg, f"tune {name} (every scenario)"):
        from data_modules.scenarios import load_scenarios

        for s in load_scenarios(data / "scenarios.json"):
            if (run_dir / s.name / "prompt" / "prompt.json").exists():
                continue
            run_tune(["--config", TUNE_RECIPE, "--seed_everything", str(cfg.seed), "--model.pretrained", str(model),
                      "--data.data", str(data), "--data.scenario", s.name, "--run_dir", str(run_dir),
                      "--trainer.max_steps", str(cfg.tune_steps),
                      "--data.batch_size", str(cfg.tune_batch), "--trainer.limit_val_batches", "0",
                      "--trainer.enable_progress_bar", "false", "--ckpt_path", "last"])  # fmt: skip
    return run_dir


def _embed(cfg: DemoConfig, root: Path, data: Path, model: Path, name: str, prompts: Path | None) -> Path:
    from qanchor_pl.embed import run_embed

    out = root / "embed" / name
    if not (out / "manifest.json").exists():
        with Stage(cfg, f"embed {name}"):
            run_embed(model=str(model), data=str(data), scenarios="all", out=str(out),
                      prompts=str(prompts) if prompts else None, accelerator="cpu", batch_size=128)  # fmt: skip
    return out


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    from data_modules.atomic import atomic_path, write_json
    from qanchor_pl.evaluate import comparisons_markdown, markdown, run_evaluate

    quiet_libraries()
    t0 = time.perf_counter()
    root = Path(cfg.out)
    pretrain_data, data = _data(cfg, root)
    exports = {name: _pretrain(cfg, root, pretrain_data, name) for name in cfg.variants}
    untrained = _untrained(cfg, root, data)
    tuned = _tune(cfg, root, data, exports["base"], "base")
    tuned_untrained = _tune(cfg, root, data, untrained, "no-pretrain")
    rows: dict[str, Path] = {BASE: _embed(cfg, root, data, exports["base"], "base", None),
                             TUNED: _embed(cfg, root, data, exports["base"], "tuned", tuned)}  # fmt: skip
    for name in cfg.variants:
        if name != "base":
            rows[VARIANTS[name][0]] = _embed(cfg, root, data, exports[name], name, None)
    rows[UNPRETRAINED] = _embed(cfg, root, data, untrained, "no-pretrain-tuned", tuned_untrained)
    with Stage(cfg, "evaluate"):
        run_evaluate(embeddings=[str(p) for p in rows.values()], names=list(rows), data=str(data),
                     out=str(root / "report"), baselines=tuple(BASELINE_ROWS),
                     profile_tokens=cfg.profile_tokens, compare=COMPARISONS)  # fmt: skip
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    table_rows = {BASELINE_ROWS.get(k, k): v for k, v in metrics["rows"].items()}
    comparisons = [{**c, "a": BASELINE_ROWS.get(c["a"], c["a"]), "b": BASELINE_ROWS.get(c["b"], c["b"])}
                   for c in metrics["comparisons"]]  # fmt: skip
    table = markdown(table_rows, metrics["scenarios"]) + "\n" + comparisons_markdown(comparisons)
    total = round(time.perf_counter() - t0, 1)
    report = {"table": table_rows, "comparisons": comparisons, "scenarios": metrics["scenarios"],
              "timings_s": cfg.timings, "total_s": total,
              "config": {k: v for k, v in cfg.__dict__.items() if k != "timings"}}  # fmt: skip
    timings = "\n".join(f"- {k}: {v} s" for k, v in cfg.timings.items())
    with atomic_path(root / "report.md") as tmp:
        tmp.write_text(f"{table}\n{timings}\n- total: {total} s\n")
    write_json(root / "report.json", report)
    print(table, file=sys.stderr)
    status("stage timings: " + ", ".join(f"{k} {v} s" for k, v in cfg.timings.items()) + f"; total {total} s")
    return {"report": str(root / "report.md"), "total_s": total}
