"""Load a trained Q-Anchor model from either a pretraining checkpoint or an export folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qanchor_pl.model.config import QAnchorConfig
from qanchor_pl.model.export import CONFIG, load_export
from qanchor_pl.model.qanchor import QAnchorModel


def _checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from None
    if "qanchor" not in ckpt:
        raise ValueError(f"{path}: not a Q-Anchor pretraining checkpoint (no 'qanchor' section)")
    return ckpt


def is_export(path: str | Path) -> bool:
    return (Path(path) / CONFIG).exists()


def tokenizer_of(path: str | Path) -> str | None:
    """Where the tokenizer of a checkpoint or export folder lives (what its data must use);
    None if ``path`` does not exist yet (a recipe printed before its pretraining has run)."""
    path = Path(path)
    if not path.exists():
        return None
    if is_export(path):
        return str(path / "tokenizer")
    return _checkpoint(path)["qanchor"]["model_config"]["inputs"]["tokenizer"]


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> QAnchorModel:
    """The model (eval mode) from an export folder or a ``qanchor pretrain`` checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return load_export(path, device=device)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or export folder")
    ckpt = _checkpoint(path)
    model = QAnchorModel(QAnchorConfig.from_dict(ckpt["qanchor"]["model_config"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lacking = sorted(trainable & set(missing))
    if lacking or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not fit its model config (missing {lacking[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval()


def check_model_fits_data(model: QAnchorModel, data_inputs: dict[str, Any], data: str | Path) -> None:
    """Refuse a data set whose inputs differ from those the model was trained on (modalities, vector
    sizes, tabular width, the text encoder's content hash): the vectors would be read as something
    they are not, without a word."""
    from data_modules.util.errors import DataError

    trained = model.config.inputs
    where = Path(data) / "manifest.json"
    for key in ("modalities", "event_dims", "tabular_dim"):
        have, want = data_inputs[key], getattr(trained, key)
        if (tuple(have) if key == "modalities" else have) != (tuple(want) if key == "modalities" else want):
            raise DataError(
                where,
                f"{key} {have} differ from the model's {want}",
                expected="the data the model was trained on, built alike",
            )
    have, want = data_inputs.get("encoder", ""), trained.encoder
    if have and want and have != want:
        raise DataError(
            where, f"event vectors made by encoder sha256 {have[:12]}..., the model was trained on vectors of "
            f"encoder sha256 {want[:12]}...", expected="`qanchor encode` with the model's encoder",
        )  # fmt: skip
