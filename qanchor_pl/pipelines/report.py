"""The experiment's report: the test table with named rows, paired differences, validation beside test,
the value tables (complementarity, label efficiency)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qanchor_pl.pipelines.experiment_config import ExperimentConfig
from qanchor_pl.pipelines.stages import status
from qanchor_pl.pipelines.time_split import TimeSplit
from qanchor_pl.pipelines.variants import row_name


def named_metrics(metrics_file: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(rows, comparisons) of an evaluate output with baseline names turned into table rows."""
    metrics = json.loads(metrics_file.read_text())
    rows = {row_name(k): v for k, v in metrics["rows"].items()}
    named = renamed(metrics["comparisons"])
    return rows, named


def renamed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparisons with their rows named (:func:`row_name`)."""
    return [{**c, "a": row_name(c["a"]), "b": row_name(c["b"])} for c in items]


def value_tables(root: Path, metrics: dict[str, Any], cfg: ExperimentConfig) -> str:
    """The complementarity and label-efficiency tables of the test report (named rows), with their
    PNG files copied beside the experiment's report.md."""
    import shutil

    from qanchor_pl.eval import label_efficiency as lab
    from qanchor_pl.eval.report import complementarity_markdown

    out = ""
    if metrics.get("complementarity"):
        out += "\n" + complementarity_markdown(renamed(metrics["complementarity"]))
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


def write_report(
    cfg: ExperimentConfig, root: Path, split: TimeSplit, tuned_row: str, t0: float
) -> dict[str, Any]:
    """``report.md`` and ``report.json`` from the two evaluations' metrics; the table on stderr."""
    from data_modules.util.atomic import atomic_path, write_json
    from qanchor_pl.eval.report import comparisons_markdown, markdown

    val_rows, val_compared = named_metrics(root / "validation" / "metrics.json")
    table_rows, compared = named_metrics(root / "report" / "metrics.json")
    metrics = json.loads((root / "report" / "metrics.json").read_text())
    extras = value_tables(root, metrics, cfg)
    table = (markdown(table_rows, metrics["scenarios"]) + "\n" + comparisons_markdown(compared) + "\n"
             + validation_markdown(val_rows, table_rows) + extras)  # fmt: skip
    total = round(time.perf_counter() - t0, 1)
    report = {"table": table_rows, "comparisons": compared, "scenarios": metrics["scenarios"],
              "headline": {"variant": cfg.headline, "row": tuned_row},
              "complementarity": renamed(metrics.get("complementarity", [])),
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
