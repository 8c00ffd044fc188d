"""``qanchor demo``: :func:`run_experiment` on the built-in synthetic world (one code path).

The world has 150 days (90 of history, a 30-day lead for the pretraining cutoff, 30 of labels);
the experiment derives the same time split from it as from anyone's logs: pretraining data cut at
day 90 (D_future answers from days 90-120), evaluation data at day 120 (labels from days 120-150).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qanchor_pl.pipelines.experiment import run_experiment
from qanchor_pl.pipelines.experiment_config import ExperimentConfig
from qanchor_pl.pipelines.stages import Stage, status

ALL_BASELINES = "minilm,mean-events,category-counts,event-counts,time-windows"
STATIONARY_BASELINES = "minilm,mean-events,category-counts,event-counts"


@dataclass
class DemoConfig:
    """The whole pipeline on the built-in synthetic world, ending in the result tables."""

    out: str = "runs/demo"
    """the demo folder (a rerun resumes: finished stages are skipped)"""
    fast: bool = False
    """a small, ~3-minute version (the end-to-end test): the sizes below left at their defaults
    take the fast preset's values"""
    users: int = 4000
    """synthetic users"""
    pretrain_steps: int = 200
    """steps of each pretraining run"""
    tune_steps: int = 70
    """steps of each prompt-tuning run"""
    tune_batch: int = 64
    """users per prompt-tuning step"""
    profile_tokens: int = 256
    """MiniLM token cap on the profile text"""
    seed: int = 0
    """the world's and the runs' seed"""
    variants: str = "base,counts-future-x5"
    """pretraining variants, comma-separated, base required: the paper's recipe and the headline
    fit 20 minutes; ablations and model switches are added here (e.g. base,counts-future-x5,
    no-contrastive,no-ntp,no-margin,no-structural,future,pna,count-token,reconstruction)"""
    headline: str = "counts-future-x5"
    """the variant prompt-tuned as the table's headline (one of ``variants``): the best of issue
    25's screening on the validation carve (docs/results.md)"""
    world: Literal["default", "dynamic"] = "default"
    """the synthetic world: default (stationary) | dynamic (trends, triggers, long tail)"""
    probe_c: float | Literal["cv"] = "cv"
    """the probe's C, or 'cv' (cross-validated on train)"""
    baselines: str | None = None
    """comma-separated; default: every baseline on the dynamic world, all but the time-window
    reference on the default world (stationary by construction: recent windows carry nothing the
    whole history does not; on validation 0.706 against mean event vectors' 0.714, and the row
    costs 5 of the 20 minutes)"""
    seeds: int = 1
    """> 1: that many experiments on the same world (OUT/seed-S), summarised as mean ± s.d."""
    timings: dict[str, float] = field(default_factory=dict)
    """filled in by the run: seconds per stage"""

    def baseline_names(self) -> str:
        """The baselines given, else the world's default set (see ``baselines``)."""
        return self.baselines or (ALL_BASELINES if self.world == "dynamic" else STATIONARY_BASELINES)

    def resolved(self) -> DemoConfig:
        """With ``fast``, every size still at its default takes the fast preset's value."""
        if not self.fast:
            return self
        # A fixed probe C: the cross-validated probe costs minutes per wide row (the end-to-end
        # test checks the wiring; the probe's CV has its own tests).
        preset = {"users": 800, "pretrain_steps": 30, "tune_steps": 10, "tune_batch": 32, "probe_c": 1.0,
                  # every ablation's wiring, and the future anchor's (its data, heads and report tables)
                  "variants": "base,no-contrastive,no-ntp,no-margin,no-structural,counts-future-x5",
                  "headline": "counts-future-x5", "baselines": ALL_BASELINES}  # fmt: skip
        defaults = DemoConfig()
        changes = {k: v for k, v in preset.items() if getattr(self, k) == getattr(defaults, k)}
        return dataclasses.replace(self, **changes)

    @classmethod
    def fast_preset(cls, out: str) -> DemoConfig:
        return cls(out=out, fast=True).resolved()


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """``qanchor demo``: synth (once) then :func:`run_experiment` on it."""
    from data_modules.synth.catalogue import FUTURE_DAYS
    from data_modules.synth.world import write_world

    cfg = cfg.resolved()
    raw = Path(cfg.out) / "raw"
    exp = ExperimentConfig(
        raw=str(raw), out=cfg.out, pretrain_steps=cfg.pretrain_steps, tune_steps=cfg.tune_steps,
        tune_batch=cfg.tune_batch, profile_tokens=cfg.profile_tokens, seed=cfg.seed, variants=cfg.variants,
        probe_c=str(cfg.probe_c), seeds=cfg.seeds, timings=cfg.timings, baselines=cfg.baseline_names(),
        headline=cfg.headline,
    )  # fmt: skip
    if not (raw / "scenarios.json").exists():
        with Stage(exp, "synth"):
            write_world(raw, n_users=cfg.users, seed=cfg.seed, lead_days=FUTURE_DAYS, world=cfg.world)
    status(f"demo: the {cfg.world} synthetic world ({cfg.users} users) at {raw}")
    return run_experiment(exp)
