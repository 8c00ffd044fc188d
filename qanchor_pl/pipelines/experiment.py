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

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qanchor_pl.pipelines.experiment_config import ExperimentConfig
from qanchor_pl.pipelines.report import (
    write_report,
)
from qanchor_pl.pipelines.stages import (
    Stage,
    attention_analysis,
    build_and_encode,
    embed_model,
    pretrain_variant,
    quiet_libraries,
    status,
    synthesize_qa,
    tune_model,
    untrained_model,
)
from qanchor_pl.pipelines.time_split import derive_split
from qanchor_pl.pipelines.variants import BASE, UNPRETRAINED, VARIANTS, comparisons

if TYPE_CHECKING:
    from data_modules.contract.inputs import RawInputs


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
    from qanchor_pl.config import EvaluateConfig
    from qanchor_pl.eval.evaluate import run_evaluate
    from qanchor_pl.eval.features import BASELINES

    t0 = time.perf_counter()
    root = Path(cfg.out)
    variants = cfg.variant_names()
    baselines = tuple(b for b in cfg.baselines.split(",") if b)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    split = derive_split(cfg, inputs)
    status("time split: " + split.describe())
    pretrain_data, data = build_and_encode(cfg, root, split, inputs)
    synthesize_qa(cfg, pretrain_data)
    exports = {name: pretrain_variant(cfg, root, pretrain_data, name) for name in variants}
    untrained = untrained_model(cfg, root, data)
    head = cfg.headline
    tuned = tune_model(cfg, root, data, exports[head], head)
    tuned_untrained = tune_model(cfg, root, data, untrained, "no-pretrain")
    tuned_row = cfg.tuned_row()
    rows: dict[str, Path] = {BASE: embed_model(cfg, root, data, exports["base"], "base", None),
                             tuned_row: embed_model(cfg, root, data, exports[head], "tuned" if head == "base" else f"{head}-tuned", tuned)}  # fmt: skip
    for name in variants:
        if name != "base":
            rows[VARIANTS[name][0]] = embed_model(cfg, root, data, exports[name], name, None)
    rows[UNPRETRAINED] = embed_model(cfg, root, data, untrained, "no-pretrain-tuned", tuned_untrained)
    attention_analysis(cfg, root, data, exports[head], tuned)
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
    return write_report(cfg, root, split, tuned_row, t0)
