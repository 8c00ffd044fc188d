"""``qanchor build``: raw logs -> UserU dataset (shards, vocabularies, benchmarks, manifest).

The build runs as stages, either all in this process (the default) or spread over a SLURM array
(``--stage`` with ``--partition I/N``; ``slurm/build.sbatch`` chains them):

1. **plan** (once): check every input, choose modalities, caps, modality metadata and the cutoff;
2. **scatter** (per share of the raw files): each file read once, every row checked, filed under
   the partition that owns its user (users by a hash of ``user_id``); **stats** (per partition):
   the partition's rows cleaned (counted skips), the history/future windows cut,
   keeps users with a users row and a history event, counts the vocabulary and, per shard, the
   events the model sees (per-modality caps), and the exact tabular moments;
3. **shards** (per partition): with the merged vocabularies, tabular mean/std and topic pool (given
   or derived from what the model sees), one shard at a time: capped event ids, times, values and
   categories, the standardised tabular vector, the D_future answer, the k most relevant D_uqa topics
   and their answers, external QA pairs, and rule-based labels;
4. **finish** (once): shards moved in, vocabularies, user-disjoint benchmarks, scenarios, topics, the
   tokenizer, and ``manifest.json`` last; the folder is swapped into place whole.

A partitioned build and the one-process build give the same per-user rows, vocabularies,
benchmarks and statistics (tested); only the shard files are cut per partition.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from data_modules.builder.finish import finish_into
from data_modules.builder.merge import merged_stats
from data_modules.builder.plan import BuildPlan, WorkFolder, check_task_matches, make_plan, read_build_inputs
from data_modules.builder.scatter import run_scatter
from data_modules.builder.shards import run_shards
from data_modules.builder.stats import run_stats
from data_modules.contract.inputs import RawInputs
from data_modules.dataset.manifest import Manifest
from data_modules.util.atomic import atomic_dir, stale_siblings
from data_modules.util.errors import DataError
from data_modules.util.lock import FolderLock
from data_modules.util.partition import MAX_PARTITIONS, PartitionSpec

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """Raw logs -> UserU shards, vocabularies, benchmarks and manifest (saved verbatim in it)."""

    raw: str | None = None
    """folder with events/, users.parquet, scenarios.json [, labels.parquet, qa.parquet]"""
    out: str = "data"
    """the data set folder"""
    events: str | None = None
    """path of the events input (overrides the raw folder's)"""
    users: str | None = None
    """path of the users table (overrides the raw folder's)"""
    scenarios: str | None = None
    """path of scenarios.json (overrides the raw folder's)"""
    labels: str | None = None
    """path of labels.parquet (overrides the raw folder's)"""
    qa: str | None = None
    """path of qa.parquet, external (user, question, answer) pairs (overrides the raw folder's)"""
    topics: str | None = None
    """path of topics.json (overrides the raw folder's)"""
    modalities_meta: str | None = None
    """path of modalities.json (overrides the raw folder's)"""
    modalities: str | None = None
    """comma-separated modalities to use, 'tabular' for the users table (default: modalities.json's
    order, else every modality in the events, sorted, + tabular)"""
    timezone: str = "UTC"
    """IANA time zone of calendar facts (days, weekends) and of a naive cutoff"""
    cutoff: str | None = None
    """ISO time splitting history from future (default: last day - future window)"""
    history_days: int = 90
    """days of behaviour before the cutoff"""
    future_days: int = 30
    """days after the cutoff: D_future answers and scenario labels"""
    max_events: str | None = None
    """per-modality event caps, e.g. bill=250,mini=150, or 'paper' (default: built-in caps)"""
    users_per_shard: int = 1024
    """users per shard file"""
    row_group_size: int = 256
    """users per parquet row group"""
    topics_per_user: int = 10
    """templated D_uqa topics per user"""
    topic_categories: int = 8
    """derived topic pool: at most this many category topics per modality"""
    future_actions: int = 5
    """D_future: most frequent future actions named per answer"""
    future_bins: int = 3
    """D_future: activity-level bins"""
    external_qa: Literal["add", "replace"] = "add"
    """external QA pairs beside the templated D_uqa, or replacing it for users who have some"""
    test_fraction: float = 0.3
    """benchmark users held out for test"""
    split_seed: int = 0
    """seed of the train/test split"""
    tokenizer_vocab: int = 4096
    """vocabulary of the data set's own tokenizer"""
    tokenizer_users: int = 20000
    """the tokenizer learns from the QA texts of this many users, the first in hash order (a uniform
    sample, the same however the build is partitioned); 0: every user"""
    max_text_chars: int = 1000
    """event texts are cut to this many characters (counted in the manifest's skipped)"""
    min_class_users: int = 1
    """each scenario needs this many users of each label in train and in test, else the build
    stops (a cutoff past the data leaves every label 0); 0 turns the check off"""
    previous: str | None = None
    """a refresh: the data set built yesterday; --raw then holds only the new event files (and the
    current users, labels, scenarios...), the windows roll forward, and the result equals a full
    build on the old and new raw files together (same options as the previous build)"""
    refreshable: bool = False
    """keep the windows' cleaned events in refresh/ (about the size of the windows' raw events, twice
    the shards) so that the next build can refresh this one with --previous; a daily pipeline passes
    it every day"""

    future_events: bool = False
    """shards also carry every future-window event (uncapped, bounded by --future_days): ids, times
    and categories per modality (fut_ev_*, fut_ts_*, fut_cat_*), the
    targets of pretraining's future-behaviour anchor. For pretraining data only: an evaluation data
    set never carries its label window (the default)"""

    stage: Literal["all", "plan", "scatter", "stats", "shards", "finish"] = "all"
    """all: the whole build in this process; else one stage of a partitioned build (slurm/build.sbatch):
    plan (once), scatter, stats and shards (one task per --partition each), finish (once)"""
    partition: str | None = None
    """I/N: the partition a scatter, stats or shards task works on (users by a hash of user_id)"""
    partitions: int = 1
    """the plan stage: how many partitions the build is split into"""
    workers: int = 1
    """processes writing shards in parallel (the QA text is Python): the CPUs a task has"""

    def modality_list(self) -> list[str] | None:
        return [m.strip() for m in self.modalities.split(",") if m.strip()] if self.modalities else None


def build(cfg: BuildConfig, inputs: RawInputs | None = None) -> Manifest | dict:
    """Run the build (``cfg.stage == "all"``) or one stage of a partitioned build. The whole build
    returns the manifest; a stage returns what it did. ``inputs``: the raw folder already read (an
    experiment reads it once for its two builds); else the whole build and the plan stage read it
    here, before anything is written. Later stages take the plan's copy."""
    if cfg.stage in ("all", "plan"):
        inputs = inputs if inputs is not None else read_build_inputs(cfg)
    if cfg.stage == "all":
        return _build_all(cfg, inputs)
    work = WorkFolder.beside(cfg.out)
    if cfg.stage == "plan":
        return _plan_stage(cfg, work, inputs)
    plan = work.load_plan()
    check_task_matches(plan, cfg, work.plan_path)
    if cfg.stage in ("scatter", "stats", "shards"):
        if cfg.partition is None:
            raise DataError("--partition", f"missing: the {cfg.stage} stage builds one partition",
                            expected=f"I/{plan.partitions}")  # fmt: skip
        spec = PartitionSpec.parse(cfg.partition)
        if spec.count != plan.partitions:
            raise DataError("--partition", f"'{cfg.partition}': the plan has {plan.partitions} partitions",
                            expected=f"I/{plan.partitions}")  # fmt: skip
        if cfg.stage == "scatter":
            run_scatter(plan, work, spec)
        elif cfg.stage == "stats":
            run_stats(plan, work, spec)
        else:
            run_shards(plan, work, spec, merged_stats(plan, work), cfg.workers)
        return {"stage": cfg.stage, "partition": spec.name, "work": str(work.root)}
    return _finish_stage(cfg, plan, work)


def _check_out(final: Path) -> None:
    if final.exists() and any(final.iterdir()) and not (final / "manifest.json").exists():
        raise DataError(final, "is not empty and holds no manifest.json: not a data set to rebuild",
                        expected="an empty or new folder, or a data set built before")  # fmt: skip


def _build_all(cfg: BuildConfig, inputs: RawInputs) -> Manifest:
    """The whole build in this process: one partition, staged in a temporary folder beside
    ``cfg.out`` and swapped into place at the end, so a killed rebuild leaves the old data set whole
    (never old and new files mixed); one build at a time per folder."""
    final = Path(cfg.out)
    _check_out(final)
    plan = make_plan(cfg, 1, inputs)  # every check of the inputs and options before anything is written
    with FolderLock(final.with_name(f".{final.name}.lock"), f"data set {final}"):
        for stale in stale_siblings(final):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-work-", dir=final.parent))
        try:
            work, spec = WorkFolder(scratch), PartitionSpec(0, 1)
            run_stats(plan, work, spec)
            merged = merged_stats(plan, work)
            run_shards(plan, work, spec, merged, cfg.workers)
            with atomic_dir(final) as staging:
                manifest = finish_into(plan, work, merged, staging)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def _plan_stage(cfg: BuildConfig, work: WorkFolder, inputs: RawInputs) -> dict:
    """Check the inputs and write ``plan.json``; the same plan again keeps the partitions already
    built (a resubmitted job resumes), a different one starts the work folder afresh."""
    if not 1 <= cfg.partitions <= MAX_PARTITIONS:
        raise DataError("--partitions", f"{cfg.partitions}", expected=f"1 to {MAX_PARTITIONS}")
    _check_out(Path(cfg.out))
    plan = make_plan(cfg, cfg.partitions, inputs)
    with FolderLock(work.root.with_name(work.root.name + ".lock"), f"build work folder {work.root}"):
        if work.plan_path.exists():
            old = _try_load(work)
            if old is not None and old.fingerprint == plan.fingerprint:
                return {
                    "stage": "plan",
                    "partitions": plan.partitions,
                    "work": str(work.root),
                    "resumed": True,
                }
            log.warning("%s holds another plan: starting afresh", work.root)
            shutil.rmtree(work.root)
        work.root.mkdir(parents=True, exist_ok=True)
        plan.save(work.plan_path)
    return {"stage": "plan", "partitions": plan.partitions, "work": str(work.root), "cutoff": plan.cutoff}


def _try_load(work: WorkFolder) -> BuildPlan | None:
    try:
        return work.load_plan()
    except DataError:
        return None


def _finish_stage(cfg: BuildConfig, plan: BuildPlan, work: WorkFolder) -> Manifest:
    """Check every partition is there (else nothing is written), assemble the data set beside
    ``cfg.out``, swap it into place, and remove the work folder."""
    work.require(plan, "stats")
    work.require(plan, "shards")
    final = Path(cfg.out)
    _check_out(final)
    with FolderLock(final.with_name(f".{final.name}.lock"), f"data set {final}"):
        for stale in stale_siblings(final):
            shutil.rmtree(stale, ignore_errors=True)
        merged = merged_stats(plan, work)
        with atomic_dir(final) as staging:
            manifest = finish_into(plan, work, merged, staging)
    shutil.rmtree(work.root, ignore_errors=True)
    return manifest
