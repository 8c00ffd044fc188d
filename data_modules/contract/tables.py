"""Reading and validating raw inputs: every problem is an error naming the file and column/row."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from data_modules.contract.columns import (
    LABELS_COLUMNS,
    QA_COLUMNS,
    TABULAR,
    check_columns,
    check_users_schema,
    read_schema,
)
from data_modules.util.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RawInputs:
    """Resolved paths of one raw data set (``--raw DIR`` plus optional per-file overrides)."""

    events: list[Path]
    users: Path | None
    scenarios: Path
    labels: Path | None = None
    qa: Path | None = None
    topics: Path | None = None
    modalities_meta: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def locate(
        cls,
        raw: str | Path | None,
        *,
        events: str | Path | None = None,
        users: str | Path | None = None,
        scenarios: str | Path | None = None,
        labels: str | Path | None = None,
        qa: str | Path | None = None,
        topics: str | Path | None = None,
        modalities_meta: str | Path | None = None,
    ) -> RawInputs:
        raw = Path(raw) if raw is not None else None

        def pick(explicit, *names):
            if explicit is not None:
                return Path(explicit)
            if raw is None:
                return None
            for name in names:
                if (raw / name).exists():
                    return raw / name
            return None

        events_path = pick(events, "events", "events.parquet")
        if events_path is None:
            raise DataError(
                raw or "<no --raw>", "no events found", expected="events/*.parquet or events.parquet"
            )
        if events_path.is_dir():
            # flat or partitioned folders (events/day=2026-03-01/*.parquet); hidden files are not data
            files = sorted(
                f
                for f in events_path.rglob("*.parquet")
                if not any(part.startswith(".") for part in f.relative_to(events_path).parts)
            )
            if not files:
                raise DataError(events_path, "directory holds no *.parquet files")
        elif events_path.exists():
            files = [events_path]
        else:
            raise DataError(events_path, "file not found")
        scen = pick(scenarios, "scenarios.json")
        if scen is None:
            raise DataError(raw or "<no --raw>", "no scenarios.json found")
        return cls(
            events=files,
            users=pick(users, "users.parquet"),
            scenarios=scen,
            labels=pick(labels, "labels.parquet"),
            qa=pick(qa, "qa.parquet"),
            topics=pick(topics, "topics.json"),
            modalities_meta=pick(modalities_meta, "modalities.json"),
        )


def infer_modalities(inputs: RawInputs, found: set[str]) -> list[str]:
    """The modalities a build uses when none are given: ``modalities.json``'s order if present, else
    every modality ``found`` in the events (sorted), plus ``tabular`` when the users table has
    features."""
    from data_modules.contract.modalities import read_modalities_meta

    if inputs.modalities_meta is not None:
        mods = [m.name for m in read_modalities_meta(inputs.modalities_meta)]
    else:
        mods = sorted(found)
    if inputs.users is not None and len(read_schema(inputs.users).names) > 1:
        mods.append(TABULAR)
    return mods


def read_users(
    path: Path | None, use_tabular: bool, owned: pl.Expr | None = None
) -> tuple[pl.DataFrame | None, list[str]]:
    """Read and validate the users table (the rows ``owned`` keeps, e.g. a partition's): ids present,
    non-empty and unique, numeric features, all finite.

    Returns (users frame with user_id + features as Float64, feature names).
    """
    if path is None:
        if use_tabular:
            raise DataError("users.parquet", "file not found (needed for the 'tabular' modality)")
        return None, []
    schema = read_schema(path)
    features = check_users_schema(path, schema)
    lf = pl.scan_parquet(path, row_index_name="row").with_columns(pl.col("user_id").cast(pl.String))
    try:
        df = lf.filter(owned if owned is not None else pl.lit(True)).collect()
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable parquet file (truncated or corrupt?): {err}") from None
    null = df.filter(pl.col("user_id").is_null()).head(1)
    if null.height:
        raise DataError(path, "null user_id", column="user_id", row=null["row"][0])
    empty = df.filter(pl.col("user_id").str.strip_chars() == "").head(1)
    if empty.height:
        raise DataError(
            path, "empty user_id", column="user_id", row=empty["row"][0], expected="a non-empty id"
        )
    dup = df.filter(pl.col("user_id").is_duplicated()).head(2)
    if dup.height:
        r = dup.row(1, named=True)
        raise DataError(path, f"duplicate user_id '{r['user_id']}'", column="user_id", row=r["row"])
    if use_tabular:
        df = df.with_columns([pl.col(c).cast(pl.Float64) for c in features])
        for c in features:
            bad = df.filter(~pl.col(c).is_finite() | pl.col(c).is_null()).head(1)
            if bad.height:
                r = bad.row(0, named=True)
                raise DataError(
                    path,
                    f"non-finite tabular value {r[c]} for user '{r['user_id']}'",
                    column=c,
                    row=r["row"],
                    expected="a finite number",
                )
    return df.select("user_id", *(features if use_tabular else [])), features if use_tabular else []


def _scan_rows(path: Path, columns: list[str], owned: pl.Expr | None) -> pl.DataFrame:
    """``columns`` of the rows ``owned`` keeps (all without it), with their row number in the file."""
    lf = pl.scan_parquet(path, row_index_name="row").select("row", *columns)
    return lf.filter(owned if owned is not None else pl.lit(True)).collect()


def read_labels(path: Path, scenario_names: set[str], owned: pl.Expr | None = None) -> pl.DataFrame:
    """Read the optional labels file (the rows ``owned`` keeps): (user_id, scenario) unique, label in
    {0, 1}, scenario known."""
    schema = read_schema(path)
    check_columns(path, schema, LABELS_COLUMNS)
    df = _scan_rows(path, ["user_id", "scenario", "label"], owned)
    df = df.with_columns(
        pl.col("user_id").cast(pl.String), pl.col("scenario").cast(pl.String), pl.col("label").cast(pl.Int64)
    )
    for c in ("user_id", "scenario"):
        empty = df.filter(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")).head(1)
        if empty.height:
            raise DataError(path, "empty value", column=c, row=empty["row"][0])
    bad = df.filter(~pl.col("label").is_in([0, 1]) | pl.col("label").is_null()).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataError(path, f"label {r['label']}", column="label", row=r["row"], expected="0 or 1")
    unknown = df.filter(~pl.col("scenario").is_in(sorted(scenario_names))).head(1)
    if unknown.height:
        r = unknown.row(0, named=True)
        raise DataError(
            path,
            f"unknown scenario '{r['scenario']}'",
            column="scenario",
            row=r["row"],
            expected=f"one of {sorted(scenario_names)}",
        )
    dup = df.filter(pl.struct("user_id", "scenario").is_duplicated()).head(2)
    if dup.height:
        r = dup.row(1, named=True)
        raise DataError(path, f"duplicate label for user '{r['user_id']}' in '{r['scenario']}'", row=r["row"])
    return df.drop("row")


def read_external_qa(path: Path, owned: pl.Expr | None = None) -> pl.DataFrame:
    """Read externally generated QA pairs (e.g. from an LLM; the rows ``owned`` keeps); null or empty
    texts are errors."""
    schema = read_schema(path)
    check_columns(path, schema, QA_COLUMNS)
    df = _scan_rows(path, ["user_id", "query", "answer"], owned)
    df = df.with_columns([pl.col(c).cast(pl.String) for c in ("user_id", "query", "answer")])
    for c in ("user_id", "query", "answer"):
        bad = df.filter(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")).head(1)
        if bad.height:
            raise DataError(path, "empty value", column=c, row=bad["row"][0])
    return df.drop("row")
