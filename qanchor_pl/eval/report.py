"""An evaluation's writers: the markdown tables (the paper's Table 2 shape: scenarios as columns,
average last; AUC and KS), paired differences, complementarity, ``metrics.json``, and TensorBoard
(ROC curves, the value tables' PNGs, an embedding projector)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

from data_modules.util.atomic import atomic_dir, atomic_path, write_json
from qanchor_pl.config import EvaluateConfig
from qanchor_pl.eval import label_efficiency as lab
from qanchor_pl.eval.plots import complementarity_png, label_efficiency_png, png_to_array


# -- reporting ----------------------------------------------------------------------------------
def with_average(metrics: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Add "Avg": the mean over the scenarios whose AUC/KS is defined."""
    defined = [m for m in metrics.values() if m["auc"] is not None]
    avg = {k: float(np.mean([m[k] for m in defined])) if defined else None for k in ("auc", "ks")}
    return {**metrics, "Avg": avg}


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(rows: dict[str, dict[str, dict[str, float]]], scenarios: list[str]) -> str:
    lines = []
    for metric in ("auc", "ks"):
        head = ["Method", *scenarios, "Avg"]
        lines += [f"**{metric.upper()}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, per in rows.items():
            cells = [_cell(per[s][metric]) for s in [*scenarios, "Avg"]]
            if metric == "auc" and "auc_se" in per["Avg"]:
                cells[-1] += f" ± {per['Avg']['auc_se']:.4f}"
            lines.append("| " + " | ".join([name, *cells]) + " |")
        if metric == "auc" and any("auc_se" in per["Avg"] for per in rows.values()):
            lines += ["", "± : bootstrap standard error of Avg AUC over the probe's test users."]
        if metric == "auc" and any(per[s]["auc"] is None for per in rows.values() for s in scenarios):
            lines += ["", "n/a: the scenario's test split has a single class; Avg is over the others."]
        lines.append("")
    return "\n".join(lines)


def comparisons_markdown(comparisons: list[dict[str, Any]]) -> str:
    """The paired comparisons as a table (empty string when there are none)."""
    if not comparisons:
        return ""
    lines = ["**Paired differences in Avg AUC** (bootstrap over test users, 95% interval)", "",
             "| A | B | A - B | 95% interval |", "|---|---|---|---|"]  # fmt: skip
    for c in comparisons:
        lines.append(f"| {c['a']} | {c['b']} | {c['delta']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] |")
    return "\n".join(lines) + "\n"


def log_tensorboard(
    out: Path,
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    projector: tuple | None,
    rows: dict[str, dict[str, Any]] | None = None,
    hparams: dict[str, Any] | None = None,
    images: dict[str, Path] | None = None,
) -> None:
    """ROC curves as scalar series (x = FPR in 1/1000, y = TPR), an embedding projector sample and,
    per row, its Avg AUC/KS in the HPARAMS view. Written to a fresh folder that then replaces
    ``out/tensorboard``: a repeated evaluation does not draw every curve twice."""
    from torch.utils.tensorboard import SummaryWriter

    with atomic_dir(out / "tensorboard") as tmp:
        writer = SummaryWriter(str(tmp))
        for tag, path in (images or {}).items():  # the report's PNGs, as images
            writer.add_image(tag, png_to_array(path), dataformats="HWC")
        _write_tensorboard(writer, curves, projector, rows, hparams)


def _write_tensorboard(
    writer: Any, curves: dict, projector: tuple | None, rows: dict | None, hparams: dict | None
) -> None:
    grid = np.linspace(0, 1, 101)
    for method, per in curves.items():
        for scenario, (scores, labels) in per.items():
            fpr, tpr, _ = binary_roc(torch.from_numpy(scores).float(), torch.from_numpy(labels).long())
            tpr_at = np.interp(grid, fpr.numpy(), tpr.numpy())
            for x, y in zip(grid, tpr_at):
                writer.add_scalar(f"roc/{scenario}/{method}", float(y), global_step=int(round(x * 1000)))
    if projector is not None:
        mat, meta, header = projector
        writer.add_embedding(torch.from_numpy(mat), metadata=meta, metadata_header=header, tag="users")
    for name, row in (rows or {}).items():
        avg = row["Avg"]
        if avg["auc"] is not None:
            writer.add_hparams({"row": name, **(hparams or {})},
                               {"hp/avg_auc": avg["auc"], "hp/avg_ks": avg["ks"]}, run_name="hparams/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name))  # fmt: skip
    writer.close()


def complementarity_markdown(items: list[dict[str, Any]]) -> str:
    """Baseline alone vs the baseline beside each embedding, same probe, paired interval."""
    lines = ["**Complementarity** (the baseline's features beside the embedding vs the baseline alone; "
             "same probe, paired bootstrap 95 % interval)", "",
             "| Baseline + embedding | Baseline | Difference | 95% interval |", "|---|---|---|---|"]  # fmt: skip
    for c in items:
        lines.append(f"| {c['a']} | {c['b']} | {c['delta']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] |")
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: Path, cfg: EvaluateConfig, chosen: list[str], rows: dict, comparisons: list[dict],
    complementarity: list[dict], efficiency: dict, seconds: dict, curves: dict, projector,
) -> None:  # fmt: skip
    """``metrics.json``, ``report.md``, the value tables' PNGs and the TensorBoard run of one evaluation."""
    split = cfg.split
    images = {}
    extra_md = ""
    if complementarity:
        images["complementarity"] = complementarity_png(complementarity, out_dir / "complementarity.png")
        extra_md += "\n" + complementarity_markdown(complementarity)
    fractions = sorted(float(f) for f in cfg.label_fractions)
    if fractions:
        images["label_efficiency"] = label_efficiency_png(
            efficiency, fractions, out_dir / "label_efficiency.png"
        )
        extra_md += "\n" + lab.markdown(efficiency, fractions)
    write_json(out_dir / "metrics.json",
               {"split": split, "scenarios": chosen, "rows": rows, "comparisons": comparisons,
                "complementarity": complementarity, "label_efficiency": efficiency if fractions else {},
                "seconds": seconds})  # fmt: skip
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(markdown(rows, chosen) + comparisons_markdown(comparisons) + extra_md)
    log_tensorboard(out_dir, curves, projector, rows, {"split": split, "probe_c": str(cfg.probe_c)}, images)
