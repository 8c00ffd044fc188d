"""Probe results written back to the training run they came from, for TensorBoard's HPARAMS view.

A row of ``qanchor evaluate`` is an embedding folder; its ``job.json`` names the model, a
pretraining checkpoint (``RUN/checkpoints/*.ckpt``) or an export that records its source
checkpoint. The run's hyperparameters (``hparams.yaml`` of its newest TensorBoard version) are
written again, with the row's Avg AUC and KS as metrics, into a sub-run
``RUN/tensorboard/<version>/probe-<split>-<row>``: the HPARAMS view then lists and sorts the
training runs by what their embeddings scored. A rerun replaces the sub-run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from data_modules.util.atomic import atomic_dir


def source_checkpoint(embed_folder: Path) -> Path | None:
    """The pretraining checkpoint behind an embedding folder, if it can be traced."""
    job = embed_folder / "job.json"
    if not job.is_file():
        return None
    model = Path(json.loads(job.read_text())["model"])
    if model.is_file():
        return model
    meta = model / "qanchor_config.json"
    source = json.loads(meta.read_text()).get("source_checkpoint") if meta.is_file() else None
    return Path(source) if source else None


def run_logdir(checkpoint: Path) -> Path | None:
    """The newest TensorBoard version folder of the run that wrote ``checkpoint``."""
    tensorboard = checkpoint.parent.parent / "tensorboard"
    versions = (
        [d for d in tensorboard.glob("*") if (d / "hparams.yaml").is_file()] if tensorboard.is_dir() else []
    )
    return max(versions, key=lambda d: d.stat().st_mtime) if versions else None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def write_back(embed_folder: Path, row: str, split: str, auc: float, ks: float) -> Path | None:
    """Write the row's probe metrics into its training run; returns the sub-run folder (or None)."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    checkpoint = source_checkpoint(embed_folder)
    logdir = run_logdir(checkpoint) if checkpoint else None
    if logdir is None:
        return None
    params = _flat(yaml.safe_load((logdir / "hparams.yaml").read_text()) or {})
    metrics = {"hp/probe_avg_auc": auc, "hp/probe_avg_ks": ks}
    target = logdir / f"probe-{split}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', row)}"
    with atomic_dir(target) as tmp:
        writer = SummaryWriter(str(tmp))
        for summary in hparams({**params, "probe.row": row, "probe.split": split}, metrics):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)
        writer.close()
    return target
