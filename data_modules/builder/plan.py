"""The build's plan (what every partition must agree on) and its work folder.

``qanchor build`` runs as stages: **plan** (one process: check the inputs, choose modalities, caps
and the cutoff), **scatter** (one task per share of the raw files: each file is read once, its rows
filed by the partition that owns their user), **stats** and **shards** (one task per partition), and
**finish** (one process: merge, benchmarks, tokenizer, manifest, swap into place). The plan is saved as
``plan.json`` in the work folder with a fingerprint of the build options and the raw files
(names, sizes, modification times), and every later task checks it: a task started with another
raw folder or other options is refused, naming what differs, so partitions of two builds never mix.

Work folder layout (a sibling of the data set, ``.NAME.parts/``)::

    plan.json
    scatter-00003-of-00008/ file-K/part=I/*.parquet  (task 3's share of the raw files, by owning partition)
    stats-00003-of-00008/   events/shard-*.parquet, users.parquet, combos.parquet, seen.parquet, stats.json
    merged/                 vocab-*.parquet, seen.parquet, merged.json   (cached by the first shards task)
    shards-00003-of-00008/  shards/*.parquet, bench/*.parquet, part.json

Each task's folder appears whole or not at all (written beside and renamed), so a rerun of a
killed task starts that partition again and a finished one is skipped.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import polars as pl

from data_modules.builder.caps import parse_caps, resolve_caps
from data_modules.builder.cutoff import (
    add_day_counts,
    check_timezone,
    day_counts,
    default_cutoff,
    resolve_cutoff,
)
from data_modules.builder.events import scan_event_columns
from data_modules.builder.refresh import day_counts_json
from data_modules.contract.columns import (
    TABULAR,
    event_modalities,
)
from data_modules.contract.inputs import InputPaths, RawInputs
from data_modules.contract.modalities import meta_from_json, meta_to_json, resolve_modalities_meta
from data_modules.contract.names import check_name
from data_modules.contract.refresh_state import REFRESH_DIR, RefreshState
from data_modules.contract.scenarios import Scenario
from data_modules.contract.topics import check_topic_modalities
from data_modules.dataset.schemas import SCHEMA_VERSION
from data_modules.util.atomic import read_json, write_json
from data_modules.util.errors import DataError
from data_modules.util.hashing import stable_hexdigest
from data_modules.util.partition import PartitionSpec, balance
from data_modules.util.skips import count_skip

log = logging.getLogger(__name__)
PLAN_VERSION = 2  # 2: the checked raw folder (inputs) in place of its paths
#: BuildConfig fields that say how to run a build, not what it builds (left out of the fingerprint).
RUN_OPTIONS = ("stage", "partition", "partitions", "workers")


@dataclass
class BuildPlan:
    """What the plan stage decides once for all partitions (saved as ``plan.json``)."""

    fingerprint: str
    partitions: int
    config: dict
    raw_files: list[list]
    inputs: dict  # the checked raw folder (RawInputs.to_json): every task's copy, never re-read
    modalities: list[str]
    event_mods: list[str]
    caps: dict[str, int]
    features: list[str]
    meta: dict[str, dict]
    cutoff: str
    skipped: dict[str, int] = field(default_factory=dict)
    scatter_files: list[list[int]] = field(default_factory=list)  # events files each scatter task reads
    day_counts: list[list] = field(default_factory=list)  # raw events per day (a refresh's default cutoff)
    valued: dict[str, int] = field(default_factory=dict)  # raw events with a value per modality
    previous: str | None = None  # a refresh: the previous data set
    events_before_window: int = 0  # a refresh: the previous data set's events before its window
    version: int = PLAN_VERSION
    schema_version: int = SCHEMA_VERSION

    @property
    def cutoff_time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.cutoff)

    @functools.cached_property
    def raw(self) -> RawInputs:
        """The raw folder as the plan stage read and checked it."""
        return RawInputs.from_json(self.inputs)

    @property
    def events(self) -> list[str]:
        """The events files with rows (the scatter tasks' shares index this list)."""
        return [str(p) for p in self.raw.events]

    @property
    def labelled_scenarios(self) -> list[str]:
        return list(self.raw.labels.scenarios) if self.raw.labels is not None else []

    @property
    def scenarios(self) -> list[Scenario]:
        return list(self.raw.scenarios)

    @property
    def modality_meta(self):
        return meta_from_json(self.meta)

    def previous_state(self) -> RefreshState | None:
        return self.raw.previous

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> BuildPlan:
        raw = read_json(path, missing="no build plan: run `qanchor build --stage plan` first")
        if raw.get("version") != PLAN_VERSION or raw.get("schema_version") != SCHEMA_VERSION:
            raise DataError(path, f"plan of another version ({raw.get('version')}/{raw.get('schema_version')})",
                            expected=f"{PLAN_VERSION}/{SCHEMA_VERSION}: run the plan stage again")  # fmt: skip
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def build_options(cfg) -> dict:
    """The options that decide a build's content (everything but how it is run)."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_OPTIONS}


def input_listing(cfg, paths: InputPaths) -> list[list]:
    """The raw listing, plus a refresh's previous state: what a plan is made from."""
    listing = paths.listing()
    if cfg.previous:
        state = Path(cfg.previous) / REFRESH_DIR / "state.json"
        if state.exists():
            st = state.stat()
            listing.append([str(state.resolve()), st.st_size, st.st_mtime_ns])
    return listing


def locate_inputs(cfg) -> InputPaths:
    return InputPaths.locate(
        cfg.raw, events=cfg.events, users=cfg.users, scenarios=cfg.scenarios, labels=cfg.labels, qa=cfg.qa,
        topics=cfg.topics, modalities_meta=cfg.modalities_meta,
    )  # fmt: skip


def read_build_inputs(cfg) -> RawInputs:
    """The build's raw folder (``cfg.raw`` and the per-file overrides, a refresh's ``cfg.previous``),
    read and checked once."""
    return RawInputs.read(locate_inputs(cfg), previous=cfg.previous or None)


def fingerprint(options: dict, listing: list[list], partitions: int) -> str:
    return stable_hexdigest(json.dumps([options, listing, partitions], sort_keys=True, default=str), 16)


def make_plan(cfg, partitions: int, inputs: RawInputs | None = None) -> BuildPlan:
    """The plan stage: from the checked raw folder (``inputs``, read here when not given), choose
    modalities, caps, modality metadata and the cutoff (one pass over the events' modality, ts and
    value columns). A refresh (``cfg.previous``) adds the previous build's counts of the raw files it
    does not read."""
    inputs = inputs if inputs is not None else read_build_inputs(cfg)
    tz = check_timezone(cfg.timezone)
    previous = _previous_state(cfg, inputs)
    skipped: dict[str, int] = dict(previous.skipped) if previous else {}
    if previous and previous.events_before_window:  # gone from the kept events, still counted
        skipped["events_outside_windows"] = previous.events_before_window
    for path in inputs.empty_events:
        count_skip(skipped, "empty_event_files", 1, f"empty events file {path}")
    files = list(inputs.events)
    valued: Counter = Counter(previous.valued if previous else {})
    days = previous.day_frame() if previous else None
    if files:
        scan = scan_event_columns(files)
        modality_values = scan.group_by("modality").agg(pl.col("value").count()).collect()
        valued.update({m: int(n) for m, n in modality_values.iter_rows() if m is not None})
        new_days = day_counts(scan.select("ts"), tz)
        days = new_days if days is None else add_day_counts(days, new_days)
    modalities = cfg.modality_list() or _infer_modalities(inputs, set(valued))
    for m in modalities:  # each names vocab/<m>.parquet and vectors/<m>.npy
        check_name(m, "--modalities" if cfg.modalities else "modality (from the events or modalities.json)")
    event_mods = event_modalities(modalities)
    if not event_mods:
        raise ValueError("modalities must name at least one event modality")
    caps = resolve_caps(modalities, parse_caps(cfg.max_events))
    _check_rule_modalities(inputs, event_mods)
    if inputs.topics is not None:
        check_topic_modalities(inputs.topics, event_mods, inputs.paths.topics)
    features: list[str] = []
    if inputs.users is not None:
        features = list(inputs.users.features) if TABULAR in modalities else []
    elif TABULAR in modalities:
        raise DataError("users.parquet", "file not found (needed for the 'tabular' modality)")
    meta = resolve_modalities_meta(inputs.modalities, inputs.paths.modalities, event_mods, dict(valued))
    if cfg.cutoff:
        cutoff = resolve_cutoff(cfg.cutoff, tz)
    else:
        cutoff, why = default_cutoff(days, cfg.future_days, tz)
        log.warning("default cutoff %s UTC: %s (set --cutoff to choose)", cutoff.isoformat(), why)
    if previous is not None and cutoff < dt.datetime.fromisoformat(previous.cutoff):
        raise DataError(
            "--cutoff", f"{cutoff.isoformat()} is before the previous data set's cutoff {previous.cutoff}",
            expected="a refresh rolls the windows forward (events before the previous window are not kept)",
        )  # fmt: skip
    options, listing = build_options(cfg), input_listing(cfg, inputs.paths)
    return BuildPlan(
        fingerprint=fingerprint(options, listing, partitions), partitions=partitions, config=options,
        raw_files=listing, inputs=inputs.to_json(), modalities=modalities,
        event_mods=event_mods, caps=caps, features=features, meta=meta_to_json(meta), cutoff=cutoff.isoformat(),
        skipped=skipped,
        scatter_files=balance([p.stat().st_size for p in files], partitions), day_counts=day_counts_json(days),
        valued=dict(sorted(valued.items())), previous=str(Path(cfg.previous)) if previous else None,
        events_before_window=previous.events_before_window if previous else 0,
    )  # fmt: skip


def _infer_modalities(inputs: RawInputs, found: set[str]) -> list[str]:
    """The modalities a build uses when none are given: ``modalities.json``'s order if present, else
    every modality ``found`` in the events (sorted), plus ``tabular`` when the users table has
    features."""
    mods = [m.name for m in inputs.modalities] if inputs.modalities is not None else sorted(found)
    if inputs.users is not None and inputs.users.features:
        mods.append(TABULAR)
    return mods


def _check_rule_modalities(inputs: RawInputs, event_mods: list[str]) -> None:
    """A scenario's rule may only name modalities the build has (else its labels would all be 0)."""
    for s in inputs.scenarios:
        unknown = [m for m in s.modalities if m not in event_mods]
        if unknown:
            raise DataError(inputs.paths.scenarios, f"rule names modality {unknown[0]!r}", entry=repr(s.name),
                            expected=f"one of the build's event modalities {event_mods}")  # fmt: skip


def _previous_state(cfg, inputs: RawInputs) -> RefreshState | None:
    """A refresh's previous data set (read by the contract), checked: built with the same options,
    and not the folder being written."""
    if not cfg.previous:
        return None
    state = inputs.previous
    if Path(cfg.previous).resolve() == Path(cfg.out).resolve():
        raise DataError("--out", f"{cfg.out} is the --previous data set",
                        expected="a new folder: the previous data set is read while the new one is built")  # fmt: skip
    state.check_options(build_options(cfg), Path(cfg.previous) / REFRESH_DIR / "state.json")
    return state


class WorkFolder:
    """The folder a partitioned build keeps between its stages (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def beside(cls, out: str | Path) -> WorkFolder:
        out = Path(out)
        return cls(out.with_name(f".{out.name}.parts"))

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def scatter_dir(self, spec: PartitionSpec) -> Path:
        return self.root / f"scatter-{spec.name}"

    def stats_dir(self, spec: PartitionSpec) -> Path:
        return self.root / f"stats-{spec.name}"

    def shards_dir(self, spec: PartitionSpec) -> Path:
        return self.root / f"shards-{spec.name}"

    @property
    def merged_dir(self) -> Path:
        return self.root / "merged"

    def load_plan(self) -> BuildPlan:
        return BuildPlan.load(self.plan_path)

    def missing(self, plan: BuildPlan, stage: str) -> list[int]:
        """Partitions whose ``stage`` output is absent or from another plan."""
        marker = {"scatter": "done.json", "stats": "stats.json", "shards": "part.json"}[stage]
        where = {"scatter": self.scatter_dir, "stats": self.stats_dir, "shards": self.shards_dir}[stage]
        out = []
        for i in range(plan.partitions):
            path = where(PartitionSpec(i, plan.partitions)) / marker
            if not path.exists() or read_json(path).get("fingerprint") != plan.fingerprint:
                out.append(i)
        return out

    def require(self, plan: BuildPlan, stage: str) -> None:
        missing = self.missing(plan, stage)
        if missing:
            shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise DataError(
                self.root, f"{len(missing)} of {plan.partitions} partitions have no {stage} output ({shown})",
                expected=f"every `--stage {stage} --partition I/{plan.partitions}` task finished: rerun the "
                "missing array tasks",
            )  # fmt: skip


def check_task_matches(plan: BuildPlan, cfg, plan_path: Path) -> None:
    """Refuse a task whose options or raw files differ from the plan's, naming the first difference."""
    options = build_options(cfg)
    for key in sorted(set(options) | set(plan.config)):
        if key == "out":
            continue
        if options.get(key) != plan.config.get(key):
            raise DataError(
                plan_path, f"this task's --{key} is {options.get(key)!r}, the plan's is {plan.config.get(key)!r}",
                expected="every stage run with the same raw folder and options (or run the plan stage again)",
            )  # fmt: skip
    listing = input_listing(cfg, locate_inputs(cfg))
    if listing != plan.raw_files:
        mine = {p: (s, t) for p, s, t in listing}
        theirs = {p: (s, t) for p, s, t in plan.raw_files}
        diff = sorted(set(mine.items()) ^ set(theirs.items()))
        raise DataError(
            plan_path, f"the raw files changed since the plan was made (first: {diff[0][0]})",
            expected="the same raw files for every stage: run the plan stage again",
        )  # fmt: skip


def publish_dir(build_fn, final: Path, is_current=lambda folder: False) -> None:
    """Run ``build_fn(folder)`` into a fresh folder beside ``final`` and rename it to ``final``. An
    existing ``final`` for which ``is_current`` holds (another task did the same work meanwhile) is
    kept and ours dropped; any other existing ``final`` (from an earlier plan) is replaced."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build_fn(tmp)
        if final.exists() and not is_current(final):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
