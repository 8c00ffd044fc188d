"""The report's figures as PNG files (matplotlib, no display) and as TensorBoard images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_modules.util.atomic import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def label_efficiency_png(table: dict[str, dict[str, dict]], fractions: list[float], path: Path) -> Path:
    """Avg AUC against the labelled fraction (log scale), one line per row, draws' spread as bars."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    xs = [*fractions, 1.0]
    for name, cells in table.items():
        ys = [cells.get(str(f) if f < 1 else "1.0", {}).get("auc") for f in xs]
        sd = [cells.get(str(f), {}).get("sd") or 0.0 for f in fractions] + [0.0]
        pts = [(x, y, s) for x, y, s in zip(xs, ys, sd) if y is not None]
        if pts:
            x, y, s = map(np.array, zip(*pts))
            ax.errorbar(x, y, yerr=s, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:.0%}" for x in xs])
    ax.set_xlabel("train users labelled")
    ax.set_ylabel("Avg AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def complementarity_png(items: list[dict[str, Any]], path: Path) -> Path:
    """Per embedding row: [baseline ; row] minus the baseline alone, with its 95 % paired interval."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.45 * max(len(items), 1)), dpi=110)
    names = [c["a"] for c in items]
    d = np.array([c["delta"] for c in items])
    err = np.array([[c["delta"] - c["lo"], c["hi"] - c["delta"]] for c in items]).T if items else None
    ax.barh(
        range(len(items)),
        d,
        xerr=err,
        capsize=3,
        color=["tab:green" if c["lo"] > 0 else "tab:gray" for c in items],
    )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(items)), names, fontsize=7)
    ax.set_xlabel("Avg AUC: [baseline ; embedding] - baseline alone (95 % paired interval)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    plt = _figure()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def png_to_array(path: Path) -> np.ndarray:
    """A PNG as [H, W, 3] uint8 (for TensorBoard's add_image)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
