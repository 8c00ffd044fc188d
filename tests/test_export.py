"""`qanchor export` folders load without Lightning and embed exactly like the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from data_modules.dataset.tokenizer import load_tokenizer
from data_modules.loading.datamodule import UserUDataModule
from data_modules.util.hashing import sha256_file
from qanchor_pl.model import backbone as bb
from qanchor_pl.model.config import TinyBackbone
from qanchor_pl.model.export import load_export
from qanchor_pl.train.pretrain import PretrainModule
from tests.conftest import run_qanchor
from tests.helpers.cli_args import LORA, pretrain_args


@pytest.fixture(scope="module")
def local_backbone(built, tmp_path_factory):
    """A causal LM in a local folder (as a downloaded Qwen would be), with the data's tokenizer."""
    out = tmp_path_factory.mktemp("local-lm")
    tok = load_tokenizer(built)
    lm = bb.build_tiny(
        TinyBackbone(hidden_size=64, intermediate_size=128, seed=3),
        len(tok),
        tok.pad_token_id,
        tok.eos_token_id,
    )
    lm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["tiny-full", "tiny-lora", "folder-lora"])
def test_export_round_trip(built, tmp_path, local_backbone, kind):
    extra = [] if kind == "tiny-full" else LORA
    if kind == "folder-lora":
        extra = [*extra, "--model.arch.backbone", str(local_backbone)]
    run_qanchor(*pretrain_args(built, tmp_path / "run", 2, *extra))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    report = json.loads(run_qanchor("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export")).stdout)
    files = report["files"]
    assert "qanchor_modules.safetensors" in files and "tokenizer/tokenizer.json" in files
    assert ("adapter/adapter_config.json" in files) == (kind != "tiny-full")
    assert any(f.startswith("backbone/") for f in files) == kind.startswith("tiny")  # a folder is re-read

    exported = load_export(tmp_path / "export")
    module = PretrainModule.load_from_checkpoint(ckpt, map_location="cpu", strict=False).eval()
    tok = None if kind != "folder-lora" else str(local_backbone)
    batch = next(iter(UserUDataModule(str(built), tokenizer=tok, batch_size=5, shuffle=False).make_dataset()))
    with torch.no_grad():
        a, b = exported.anchor(batch), module.model.anchor(batch)
    assert torch.allclose(a, b, atol=1e-6)

    again = run_qanchor("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export"), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    # shared like any folder (mkdtemp's 0700 would lock others out), with a model card
    export = tmp_path / "export"
    assert export.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644) for p in export.rglob("*"))
    meta = json.loads((export / "qanchor_config.json").read_text())
    assert meta["source_checkpoint"] == str(ckpt.resolve())  # evaluate writes probe results back there
    card = (export / "README.md").read_text()
    assert sha256_file(built / "manifest.json") in card and "load_export" in card
    assert "checkpoint step: 2" in card and ("LoRA r=4" in card) == (kind != "tiny-full")
