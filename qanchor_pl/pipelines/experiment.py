"""``qanchor experiment --raw RAW --out DIR``: the paper's whole experiment on anyone's raw logs.

validate -> time split -> build twice -> encode -> [qa-synth] -> pretrain (base + ablations) -> export -> tune
every scenario (base, and an untrained model for "w/o pretraining") -> embed (KV cache) ->
evaluate against the own-input baselines and a text baseline -> report.md / report.json.

Time split, as in production: with a label window of ``future_days`` days, the evaluation data is
cut ``future_days`` before the end of the data (its labels: the last window); the pretraining data
one window earlier, so its D_future answers end where the labels begin and no label is ever a
pretraining target. Both cutoffs are derived from the data, printed, and can be overridden.

Everything lands under one folder whose TensorBoard runs are named by what they are
(``pretrain/base/...``, ``tune/base/<scenario>/...``); every stage is skipped when its output
exists, so a re-run resumes. Model size, steps and data caps come from recipes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_modules.util.errors import DataError

if TYPE_CHECKING:
    from data_modules.contract.inputs import RawInputs

# name -> (table row, dotted overrides of the pretraining recipe)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("Q-Anchor (base)", {}),
    "no-contrastive": ("w/o contrastive", {"model.contrastive.enabled": False}),
    "no-ntp": ("w/o NTP", {"model.ntp_weight": 0}),
    "no-margin": ("w/o margin filter", {"model.contrastive.margin": None}),
    "no-structural": (
        "w/o structural tokens",
        {"model.arch.user_marker": False, "model.arch.modality_markers": False},
    ),
    # Model switches (issue 13): each a recipe override with its own row, kept only if it helps
    # on the validation split (`qanchor diagnose`).
    "residual": (
        "+ residual path (pooled modality tokens into the head)",
        {"model.arch.head_residual": True},
    ),
    "wide-head": ("+ wider head (inner 1024)", {"model.arch.head_hidden": 1024}),
    "learnable-tau": ("+ learnable temperature", {"model.contrastive.learnable_temperature": True}),
    "event-time": ("+ event ages in the event tokens", {"model.arch.event_time": True}),
    "event-counts": ("+ event counts in the modality tokens", {"model.arch.event_counts": True}),
    "time-counts": (
        "+ event ages and event counts",
        {"model.arch.event_time": True, "model.arch.event_counts": True},
    ),
    # Issue 25: the embedding must carry future behaviour (pretraining data built with future events).
    "future": ("+ future anchor (occurs within 7/14/30 days, every query)", {"model.future.weight": 1.0}),
    "future-dq": (
        "+ future anchor (occurs within 7/14/30 days, D_future query only)",
        {"model.future.weight": 1.0, "model.future.queries": "future"},
    ),
    "future-dense": (
        "+ dense all-action future anchor",
        {"model.future.weight": 1.0, "model.future.form": "dense", "data.future_negatives": 64},
    ),
    "pna": ("+ count-aware pooling (PNA scalers)", {"model.arch.pooling": "pna"}),
    "count-token": ("+ count token", {"model.arch.count_token": True}),
    "reconstruction": ("+ count reconstruction", {"model.reconstruction_weight": 1.0}),
    "counts-future": (
        "+ PNA pooling, count token, future anchor, reconstruction",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 1.0,
            "model.reconstruction_weight": 1.0,
        },
    ),  # fmt: skip
    "counts-future-residual": (
        "+ PNA pooling, count token, future anchor, reconstruction, residual path",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 1.0,
            "model.reconstruction_weight": 1.0,
            "model.arch.head_residual": True,
        },
    ),  # fmt: skip
    "counts-future-light": (
        "+ PNA pooling, count token, future anchor, reconstruction; InfoNCE and NTP at 0.1",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 1.0,
            "model.reconstruction_weight": 1.0,
            "model.contrastive.weight": 0.1,
            "model.ntp_weight": 0.1,
        },
    ),  # fmt: skip
    "counts-future-x5": (
        "+ PNA pooling, count token, future anchor and reconstruction at weight 5",
        {
            "model.arch.pooling": "pna",
            "model.arch.count_token": True,
            "model.future.weight": 5.0,
            "model.reconstruction_weight": 5.0,
        },
    ),  # fmt: skip
    # The contrastive loss on the L2-normalised <USER_EMB> hidden state itself (no head): the NTP-only
    # model's hidden state beat the contrastive head's output on validation.
    "no-head": (
        "u = <USER_EMB> hidden state, contrastive on it (no head)",
        {"model.arch.embedding": "hidden"},
    ),
}
# evaluate's baseline name -> table row
BASELINE_ROWS = {
    "minilm": "General text embedding (MiniLM, profile text)",
    "mean-events": "Mean event vectors + tabular",
    "category-counts": "Event counts per modality and category + tabular",
    "event-counts": "Reference: bag of events (log counts) + tabular",
    "time-windows": "Reference: last 7/30/90 days (mean vectors + log counts) + tabular",
}
BASE, TUNED, UNPRETRAINED = "Q-Anchor (base)", "Q-Anchor (prompt-tuned)", "w/o pretraining (prompt-tuned)"


@dataclass
class ExperimentConfig:
    """One experiment: the data, the split, the recipes and sizes. ``None`` = derived / the recipe's."""

    raw: str = ""
    """your raw folder (the raw-log contract: events/, users.parquet, scenarios.json, ...)"""
    out: str = "runs/experiment"
    """the experiment folder; a rerun resumes (finished stages are skipped)"""
    pretrain_recipe: str = "pretrain/tiny-cpu"
    """the pretraining recipe (a shipped name or a file)"""
    tune_recipe: str = "tune/tiny-cpu"
    """the prompt-tuning recipe (a shipped name or a file)"""
    pretrain_steps: int | None = 200
    """steps of each pretraining run (null: the recipe's)"""
    tune_steps: int | None = 70
    """steps of each prompt-tuning run (null: the recipe's)"""
    tune_batch: int | None = 64
    """users per prompt-tuning step (null: the recipe's)"""
    max_events: str | None = None
    """build caps: 'paper', 'rate=64,workout=32' (null: the defaults)"""
    modalities: str | None = None
    """comma-separated (null: the raw folder's modalities.json, else the events')"""
    timezone: str = "UTC"
    """IANA time zone of calendar facts"""
    history_days: int = 90
    """days of behaviour before each cutoff"""
    future_days: int = 30
    """the label window, and the D_future window of the pretraining data"""
    pretrain_cutoff: str | None = None
    """ISO time (null: derived, one label window before the evaluation cutoff)"""
    eval_cutoff: str | None = None
    """ISO time (null: derived, one label window before the end of the data)"""
    encoder: str = "minilm"
    """event-text encoder: hash | minilm | a Hugging Face folder"""
    variants: str = "base,no-contrastive,no-ntp,no-margin,no-structural"
    """pretraining variants, comma-separated, base required"""
    headline: str = "base"
    """the variant that is prompt-tuned and heads the table (chosen on validation; must be one of
    the variants); "w/o pretraining" tunes an untrained model of its architecture"""
    label_fractions: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.10, 0.25])
    """label efficiency on the test table: fractions of the train users labelled ([]: none)"""
    baselines: str = "minilm,mean-events,category-counts,event-counts,time-windows"
    """own-input and text baselines, comma-separated"""
    profile_tokens: int = 256
    """MiniLM token cap on the profile text (all-MiniLM-L6-v2's own limit)"""
    probe_c: str = "cv"
    """the probe's C, or 'cv': chosen by 3-fold cross-validation on train"""
    qa_version: str = "templated"
    """templated | NAME | templated+NAME: NAME is generated by qa-synth"""
    qa_model: str | None = None
    """the LLM folder qa-synth uses when qa_version names a generated version"""
    qa_recipe: str | None = None
    """a qa-synth recipe (its keys: QASynthConfig's fields)"""
    seed: int = 0
    """the runs' seed"""
    seeds: int = 1
    """> 1: that many experiments (seed, seed + 1, ...) in OUT/seed-S, summarised in OUT/seeds.md"""
    reuse_from: list[str] = field(default_factory=list)
    """earlier experiment folders on the same raw data whose text vectors (same encoder only) are
    copied, not recomputed (set by ``seeds`` for every seed after the first)"""
    feature_cache: str | None = None
    """where the baselines' features are cached (null: OUT/features); ``seeds`` shares one folder,
    since features depend on the histories, not on the split"""
    threads: int = 2
    """compute threads, pinned for torch and BLAS: results depend on reduction order, so a 64-core
    box repeats a 2-core table"""
    timings: dict[str, float] = field(default_factory=dict)
    """filled in by the run: seconds per stage"""

    def variant_names(self) -> list[str]:
        names = [v for v in self.variants.split(",") if v]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or "base" not in names:
            raise ValueError(
                f"variants {names}: every name must be one of {list(VARIANTS)}, and 'base' is required"
            )
        if self.headline not in names:
            raise ValueError(f"headline '{self.headline}' is not among the variants {names}")
        return names

    def tuned_row(self) -> str:
        """The prompt-tuned headline's table row."""
        return TUNED if self.headline == "base" else f"Q-Anchor {VARIANTS[self.headline][0]} (prompt-tuned)"


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


# -- time split ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeSplit:
    """Naive-UTC instants: data span, the two cutoffs, and the label window's end."""

    first_event: dt.datetime
    last_event: dt.datetime
    pretrain_cutoff: dt.datetime
    eval_cutoff: dt.datetime
    label_end: dt.datetime

    def describe(self) -> str:
        return (
            f"data {self.first_event:%Y-%m-%d %H:%M} .. {self.last_event:%Y-%m-%d %H:%M} (UTC); pretraining cutoff "
            f"{self.pretrain_cutoff.isoformat()} (D_future to {self.eval_cutoff.isoformat()}); evaluation cutoff "
            f"{self.eval_cutoff.isoformat()}, labels from {self.eval_cutoff.isoformat()} to {self.label_end.isoformat()}"
        )


def derive_split(cfg: ExperimentConfig, inputs: RawInputs | None = None) -> TimeSplit:
    """The two cutoffs from the data (or the overrides), checked: labels inside the data, the
    pretraining data's future window ending no later than the labels' start."""
    import polars as pl

    from data_modules.builder.cutoff import check_timezone, day_counts, default_cutoff, resolve_cutoff
    from data_modules.builder.events import scan_event_columns

    tz = check_timezone(cfg.timezone)
    if inputs is None:
        from data_modules.contract.inputs import read_inputs

        inputs = read_inputs(cfg.raw)
    events = scan_event_columns(list(inputs.events))  # the build checks every row; here only times
    first, last = (
        events.select(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")).collect().row(0)
    )
    window = dt.timedelta(days=cfg.future_days)
    ev_cut = (
        resolve_cutoff(cfg.eval_cutoff, tz)
        if cfg.eval_cutoff
        else default_cutoff(day_counts(events, tz), cfg.future_days, tz)[0]
    )
    pre_cut = resolve_cutoff(cfg.pretrain_cutoff, tz) if cfg.pretrain_cutoff else ev_cut - window
    where = "--eval-cutoff" if cfg.eval_cutoff else str(inputs.events[0].parent)
    if ev_cut + window > last + dt.timedelta(days=1):
        raise DataError(where, f"the label window {ev_cut} .. {ev_cut + window} goes beyond the data's last event {last}",
                        expected="an evaluation cutoff at least --future-days before the end of the data")  # fmt: skip
    if pre_cut + window > ev_cut:
        raise DataError("--pretrain-cutoff", f"{pre_cut} + {cfg.future_days} days passes the evaluation cutoff {ev_cut}: "
                        "pretraining answers would state the labels", expected=f"at most {ev_cut - window}")  # fmt: skip
    if pre_cut <= first:
        raise DataError(where, f"the pretraining cutoff {pre_cut} is not after the first event {first}: "
                        f"the data spans {(last - first).days} days, less than two label windows of {cfg.future_days} days",
                        expected="a longer log or a shorter --future-days")  # fmt: skip
    return TimeSplit(first, last, pre_cut, ev_cut, ev_cut + window)


# -- stages --------------------------------------------------------------------------------------
def _data(cfg: ExperimentConfig, root: Path, split: TimeSplit, inputs: RawInputs) -> tuple[Path, Path]:
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


def _qa_synth(cfg: ExperimentConfig, data: Path) -> None:
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


def _pretrain(cfg: ExperimentConfig, root: Path, data: Path, name: str) -> Path:
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


def _untrained(cfg: ExperimentConfig, root: Path, data: Path) -> Path:
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


def _tune(cfg: ExperimentConfig, root: Path, data: Path, model: Path, name: str) -> Path:
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


def _embed(
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


def comparisons(variants: list[str], tuned: str = TUNED) -> list[tuple[str, str]]:
    """(A, B) pairs: the report gives a paired-bootstrap interval of Avg AUC(A) - AUC(B)."""
    return [(BASE, "minilm"), (BASE, "mean-events"),
            *((tuned, b) for b in ("mean-events", "event-counts", "category-counts", "time-windows")),
            (tuned, BASE), (tuned, UNPRETRAINED),
            *((VARIANTS[v][0], BASE) for v in variants if v != "base"),
            *((VARIANTS[v][0], b) for v in variants if v != "base" for b in ("mean-events", "category-counts"))]  # fmt: skip


def _named(metrics_file: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(rows, comparisons) of an evaluate output with baseline names turned into table rows."""
    metrics = json.loads(metrics_file.read_text())
    rows = {row_name(k): v for k, v in metrics["rows"].items()}
    named = _renamed(metrics["comparisons"])
    return rows, named


def row_name(key: str) -> str:
    """A report key as its table row: baseline keys named, also inside "[key ; row]"."""
    if key.startswith("["):
        base, _, rest = key[1:].partition(" ; ")
        return f"[{BASELINE_ROWS.get(base, base)} ; {rest}"
    return BASELINE_ROWS.get(key, key)


def _renamed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparisons with their rows named (:func:`row_name`)."""
    return [{**c, "a": row_name(c["a"]), "b": row_name(c["b"])} for c in items]


def _value_tables(root: Path, metrics: dict[str, Any], cfg: ExperimentConfig) -> str:
    """The complementarity and label-efficiency tables of the test report (named rows), with their
    PNG files copied beside the experiment's report.md."""
    import shutil

    from qanchor_pl.eval import label_efficiency as lab
    from qanchor_pl.eval.evaluate import complementarity_markdown

    out = ""
    if metrics.get("complementarity"):
        out += "\n" + complementarity_markdown(_renamed(metrics["complementarity"]))
    if metrics.get("label_efficiency"):
        named = {row_name(k): v for k, v in metrics["label_efficiency"].items()}
        out += "\n" + lab.markdown(named, sorted(float(f) for f in cfg.label_fractions))
        out += ("(prompt-tuned rows are left out: their prompts were tuned on every train label, "
                "so only a tuning rerun on each subset would be a fair cell)\n")  # fmt: skip
    for png in ("complementarity.png", "label_efficiency.png"):
        if (root / "report" / png).exists():
            shutil.copyfile(root / "report" / png, root / png)
    return out


def validation_markdown(val_rows: dict[str, Any], test_rows: dict[str, Any]) -> str:
    """Avg AUC per row on the validation carve (where choices are made) beside the test split."""
    lines = ["**Validation vs test** (Avg AUC; validation = a 20 % carve of the train users, probe fitted",
             "on the rest; choices are made on it, the test split is read for the table only)", "",
             "| Method | Validation | Test |", "|---|---|---|"]  # fmt: skip

    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    for name, row in val_rows.items():
        val, test = row["Avg"]["auc"], test_rows.get(name, {}).get("Avg", {}).get("auc")
        lines.append(f"| {name} | {cell(val)} | {cell(test)} |")
    return "\n".join(lines) + "\n"


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) every stage, with ``cfg.threads`` compute threads; returns where the report is
    and the total time."""
    import torch
    from threadpoolctl import threadpool_limits

    from qanchor_pl.pipelines.seeds import run_seeds

    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    from data_modules.contract.inputs import read_inputs

    quiet_libraries()
    inputs = read_inputs(cfg.raw)  # the raw folder read and checked once, before anything is written
    run = functools.partial(_run, inputs=inputs)
    torch.set_num_threads(cfg.threads)
    with threadpool_limits(limits=cfg.threads):
        return run_seeds(cfg, run) if cfg.seeds > 1 else run(cfg)


def _run(cfg: ExperimentConfig, inputs: RawInputs) -> dict[str, Any]:
    from data_modules.util.atomic import atomic_path, write_json
    from qanchor_pl.config import EvaluateConfig
    from qanchor_pl.eval.evaluate import BASELINES, comparisons_markdown, markdown, run_evaluate

    t0 = time.perf_counter()
    root = Path(cfg.out)
    variants = cfg.variant_names()
    baselines = tuple(b for b in cfg.baselines.split(",") if b)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    split = derive_split(cfg, inputs)
    status("time split: " + split.describe())
    pretrain_data, data = _data(cfg, root, split, inputs)
    _qa_synth(cfg, pretrain_data)
    exports = {name: _pretrain(cfg, root, pretrain_data, name) for name in variants}
    untrained = _untrained(cfg, root, data)
    head = cfg.headline
    tuned = _tune(cfg, root, data, exports[head], head)
    tuned_untrained = _tune(cfg, root, data, untrained, "no-pretrain")
    tuned_row = cfg.tuned_row()
    rows: dict[str, Path] = {BASE: _embed(cfg, root, data, exports["base"], "base", None),
                             tuned_row: _embed(cfg, root, data, exports[head], "tuned" if head == "base" else f"{head}-tuned", tuned)}  # fmt: skip
    for name in variants:
        if name != "base":
            rows[VARIANTS[name][0]] = _embed(cfg, root, data, exports[name], name, None)
    rows[UNPRETRAINED] = _embed(cfg, root, data, untrained, "no-pretrain-tuned", tuned_untrained)
    pairs = [(a, b) for a, b in comparisons(variants, tuned_row) if b not in BASELINES or b in baselines]
    complement = "category-counts" if "category-counts" in baselines else None
    probe_c = cfg.probe_c if cfg.probe_c == "cv" else float(cfg.probe_c)
    # Validation first (the figures choices are made on), then the test split, read for the table.
    for part, folder in (("validation", "validation"), ("test", "report")):
        with Stage(cfg, f"evaluate ({part})"):
            run_evaluate(EvaluateConfig(
                embeddings=[str(p) for p in rows.values()], names=list(rows), data=str(data),
                out=str(root / folder), baselines=",".join(baselines) or "none",
                profile_tokens=cfg.profile_tokens, compare=pairs, probe_c=probe_c, split=part,
                val_seed=cfg.seed, minilm_cache=str(root / "report"), complement=complement,
                feature_cache=cfg.feature_cache or str(root / "features"),
                # label efficiency for the table adopters read (the test split), not for screening
                label_fractions=list(cfg.label_fractions) if part == "test" else []))  # fmt: skip
    val_rows, val_compared = _named(root / "validation" / "metrics.json")
    table_rows, compared = _named(root / "report" / "metrics.json")
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    extras = _value_tables(root, metrics, cfg)
    table = (markdown(table_rows, metrics["scenarios"]) + "\n" + comparisons_markdown(compared) + "\n"
             + validation_markdown(val_rows, table_rows) + extras)  # fmt: skip
    total = round(time.perf_counter() - t0, 1)
    report = {"table": table_rows, "comparisons": compared, "scenarios": metrics["scenarios"],
              "headline": {"variant": cfg.headline, "row": tuned_row},
              "complementarity": _renamed(metrics.get("complementarity", [])),
              "label_efficiency": {row_name(k): v for k, v in metrics.get("label_efficiency", {}).items()},
              "validation": {"table": val_rows, "comparisons": val_compared},
              "time_split": {k: v.isoformat() for k, v in asdict(split).items()},
              "timings_s": cfg.timings, "total_s": total,
              "config": {k: v for k, v in asdict(cfg).items() if k != "timings"}}  # fmt: skip
    timings = "\n".join(f"- {k}: {v} s" for k, v in cfg.timings.items())
    with atomic_path(root / "report.md") as tmp:
        tmp.write_text(f"{table}\n- time split: {split.describe()}\n{timings}\n- total: {total} s\n")
    write_json(root / "report.json", report)
    print(table, file=sys.stderr)
    status("stage timings: " + ", ".join(f"{k} {v} s" for k, v in cfg.timings.items()) + f"; total {total} s")
    return {"report": str(root / "report.md"), "total_s": total}
