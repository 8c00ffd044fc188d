"""The raw tables' rows, checked: users, labels, external QA pairs (every problem names the file,
column and row). :class:`~data_modules.contract.inputs.RawInputs` holds them as handles."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pyarrow as pa

from data_modules.contract.columns import (
    LABELS_COLUMNS,
    QA_COLUMNS,
    check_columns,
    check_users_schema,
    read_schema,
)
from data_modules.util.errors import DataError

log = logging.getLogger(__name__)


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
