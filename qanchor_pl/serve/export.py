"""``qanchor export``: a pretraining checkpoint -> an export folder with its model card.

The card (README.md in the export) says what the model is, how it was trained (the checkpoint's
hyperparameters and step), which data (the manifest's sha256), what it scored (the checkpoint's
monitored metric, and the probe table when the run folder has one) and how to load it without
Lightning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_modules.util.hashing import sha256_file

CARD = """# Q-Anchor user embedding model

A Query-as-Anchor model: a user's behaviour logs plus a natural-language query -> a
{embed_dim}-d, scenario-aware user embedding. Exported from `{ckpt}` by `qanchor export`.

## Model
- backbone: `{backbone}` ({lora})
- embedding: {embed_dim}-d, from the {embedding}
- modalities: {modalities}

## Training
- checkpoint step: {step} (epoch {epoch})
- data: `{data}`, manifest sha256 `{manifest_sha}`
- hyperparameters:

```json
{hparams}
```

## Metrics
{metrics}

## Load it (no Lightning)
```python
from qanchor_pl.model.export import load_export
model = load_export("{out}")          # QAnchorModel, eval mode
# or: qanchor embed --model {out} --data DATA --out EMBEDDINGS
```
"""


def _metrics(ckpt: dict[str, Any], run_dir: Path) -> str:
    lines = []
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and state.get("best_model_score") is not None:
            score = float(state["best_model_score"])
            lines.append(f"- best `{state.get('monitor') or key}`: {score:.4f}")
    probe = run_dir / "probe" / "metrics.json"  # written by `qanchor evaluate --out RUN/probe`
    if probe.exists():
        rows = json.loads(probe.read_text())["rows"]
        for name, row in rows.items():
            auc = row["Avg"]["auc"]
            lines.append(f"- probe {name}: Avg AUC {auc:.4f}, KS {row['Avg']['ks']:.4f}")
    return "\n".join(lines) or "- none recorded in the checkpoint"


def model_card(ckpt_path: Path, ckpt: dict[str, Any], config: Any, out: Path) -> str:
    """The export's README.md."""
    hparams = ckpt.get("hyper_parameters") or {}
    data_hp = ckpt.get("datamodule_hyper_parameters") or {}
    data = Path(str(data_hp.get("data", "")))
    manifest = data / "manifest.json"
    lora = "full fine-tuning" if config.lora is None else f"LoRA r={config.lora.r}, alpha={config.lora.alpha}"
    run_dir = ckpt_path.parent.parent  # RUN/checkpoints/last.ckpt
    return CARD.format(
        ckpt=ckpt_path, backbone=config.backbone, lora=lora, embed_dim=config.embed_dim,
        embedding=config.embedding, modalities=", ".join(config.inputs.modalities),
        step=ckpt.get("global_step"), epoch=ckpt.get("epoch"), data=data,
        manifest_sha=sha256_file(manifest) if manifest.is_file() else "unknown (data folder not found)",
        hparams=json.dumps(hparams, indent=2, default=str), metrics=_metrics(ckpt, run_dir), out=out,
    )  # fmt: skip


def export_checkpoint(ckpt: str, out: str, *, overwrite: bool = False) -> dict:
    """Load a pretraining checkpoint and export its model with a model card."""
    import torch

    from qanchor_pl.model.export import export_model
    from qanchor_pl.train.pretrain import PretrainModule

    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt {path}: no such checkpoint file")
    module = PretrainModule.load_from_checkpoint(path, map_location="cpu", strict=False)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    card = model_card(path, raw, module.model.config, Path(out))
    return export_model(module.model, out, overwrite=overwrite, card=card, source=path)
