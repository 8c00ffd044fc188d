"""Export a trained model to a folder usable without Lightning, and load it back.

Layout of an export folder:
    qanchor_config.json          QAnchorConfig (backbone source, data inputs, layout switches) + format
    qanchor_modules.safetensors  user encoder, special tokens, projection head
    tokenizer/                   the tokenizer the model was trained with
    adapter/                     peft LoRA adapter (save_pretrained), when LoRA was used
    backbone/                    the full backbone (save_pretrained), when it cannot be fetched from
                                 its source: the tiny model, or a backbone trained without LoRA
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_modules.util.atomic import atomic_dir
from qanchor_pl.model import backbone as bb
from qanchor_pl.model.config import QAnchorConfig
from qanchor_pl.model.qanchor import QAnchorModel

FORMAT = "qanchor-export/1"
CONFIG = "qanchor_config.json"
MODULES = "qanchor_modules.safetensors"
OWN_MODULES = ("user_encoder.", "special.", "head.")


def export_model(
    model: QAnchorModel,
    out: str | Path,
    *,
    overwrite: bool = False,
    card: str | None = None,
    source: str | Path | None = None,
) -> dict:
    """Write ``model`` to ``out`` (built in a temp folder beside it, then renamed into place), with
    ``card`` (markdown) as its README.md. Folders are 0755 and files 0644: an export is shared."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_dir(out) as tmp:
        cfg = model.config
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if k.startswith(OWN_MODULES)
        }
        save_file(state, tmp / MODULES)
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if cfg.lora is not None:
            model.backbone.save_pretrained(tmp / "adapter")
        ship_backbone = cfg.backbone == "tiny" or cfg.lora is None
        if ship_backbone:
            # with LoRA, the base WITHOUT the injected adapter layers
            base = _tiny_base(model) if cfg.lora is not None else bb.base_causal_lm(model.backbone)
            base.save_pretrained(tmp / "backbone")
        meta = {"format": FORMAT, "config": cfg.to_dict(), "ships_backbone": ship_backbone,
                "source_checkpoint": str(Path(source).resolve()) if source else None}  # fmt: skip
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        if card is not None:
            (tmp / "README.md").write_text(card)
        _share(tmp)
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return {"out": str(out), "bytes": sum(files.values()), "files": files}


def _share(folder: Path) -> None:
    """Readable by everyone (mkdtemp makes 0700), writable by the owner."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _tiny_base(model: QAnchorModel) -> torch.nn.Module:
    """The LoRA model's base weights as a plain transformers model (the tiny base is rebuilt from
    its seed, which is exactly the frozen base the adapter was trained on)."""
    cfg = model.config
    tok = model.tokenizer
    return bb.build_tiny(cfg.tiny, len(tok), tok.pad_token_id, tok.eos_token_id)


def load_export(path: str | Path, *, device: str | torch.device = "cpu") -> QAnchorModel:
    """A :class:`QAnchorModel` from an export folder, in eval mode."""
    path = Path(path)
    meta_path = path / CONFIG
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a Q-Anchor export: {CONFIG} is missing")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    raw = meta["config"]
    raw["inputs"]["tokenizer"] = str(path / "tokenizer")
    cfg = QAnchorConfig.from_dict(raw)
    if meta["ships_backbone"]:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path / "backbone", dtype=getattr(torch, cfg.backbone_dtype))
    else:
        lm = bb.load_pretrained(cfg.backbone, cfg.backbone_dtype)
    if cfg.lora is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, path / "adapter")
    model = QAnchorModel(cfg, backbone_module=lm)
    missing, unexpected = model.load_state_dict(load_file(path / MODULES), strict=False)
    own_missing = [k for k in missing if k.startswith(OWN_MODULES)]
    if own_missing or unexpected:
        raise ValueError(f"{path / MODULES}: missing {own_missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval()
