"""PromptTuneModule: cluster-based soft prompt tuning for one scenario (paper 3.2.3).

The pretrained model (backbone, LoRA, user encoder, projection head) is frozen and kept in eval
mode. Trained: ``n_prompt`` vectors placed between the user prefix and the query (so the prefix KV
cache stays shared by every scenario) and ``prototypes_per_class`` prototypes per class. Loss
(paper eq. 7, with cosine prototypes): for u = anchor(prefix, prompt, query),
    class logit_k = logsumexp over class k's prototypes p of (u . p / |p|) / tau
    L = cross-entropy(class logits, label)
With one prototype per class this is exactly eq. 7 with unit-norm prototypes; several per class
("cluster-based") let a class cover several user clusters.

The artifact (``RUN/<scenario>/prompt/``) is small and separate from the backbone:
``prompt.safetensors`` (prompt [n_prompt, H], prototypes [K*m, E]) and ``prompt.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchmetrics.classification import BinaryAUROC

from data_modules.util.atomic import atomic_path, write_json
from qanchor_pl.model.load import check_model_fits_data, load_model
from qanchor_pl.train.optim import make_optimizer, warmup_cosine_schedule

PROMPT_FILE, PROMPT_META = "prompt.safetensors", "prompt.json"


def prototype_logits(
    u: torch.Tensor, prototypes: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class logits [B, K] from prototypes [K*m, E] (class-major: rows k*m .. k*m+m-1 are class k)."""
    sims = u.float() @ F.normalize(prototypes.float(), dim=-1).T / temperature  # [B, K*m]
    return torch.logsumexp(sims.view(u.shape[0], num_classes, -1), dim=-1)


class PromptTuneModule(L.LightningModule):
    """Learns a soft prompt and class prototypes on one scenario; everything else frozen.

    Args:
        pretrained: a ``qanchor pretrain`` checkpoint file or a ``qanchor export`` folder.
        n_prompt: soft prompt length (the paper: 6 saturates); 0 = prototypes only.
        prototypes_per_class: 1 = eq. 7; more = cluster-based prototypes.
        num_classes: label classes (binary scenarios: 2).
        temperature: tau of the prototype softmax.
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW, warmup then cosine over max_steps.
        seed: initialisation of the prompt and prototypes.
    """

    def __init__(
        self,
        pretrained: str = "runs/demo/pretrain/base/checkpoints/last.ckpt",
        n_prompt: int = 6,
        prototypes_per_class: int = 1,
        num_classes: int = 2,
        temperature: float = 0.1,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold only the prompt and the prototypes
        self.model = load_model(pretrained)
        self.model.requires_grad_(False)
        emb = self.model.token_embedding.weight
        g = torch.Generator().manual_seed(seed)
        # Start the prompt from real token embeddings (the scale the backbone expects), chosen at random.
        rows = torch.randint(0, emb.shape[0], (n_prompt,), generator=g)
        self.prompt = nn.Parameter(emb.detach()[rows].clone().float())
        self.prototypes = nn.Parameter(
            torch.randn(num_classes * prototypes_per_class, self.model.embedding_dim, generator=g)
        )
        self.val_auc = BinaryAUROC()
        self.step_counts: dict[str, float] = {}

    # -- forward ----------------------------------------------------------------------------------
    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        prompt = self.prompt if self.hparams.n_prompt > 0 else None
        return self.model.anchor(batch, prompt=prompt)

    def class_logits(self, u: torch.Tensor) -> torch.Tensor:
        return prototype_logits(u, self.prototypes, self.hparams.num_classes, self.hparams.temperature)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "model_inputs"):
            check_model_fits_data(self.model, datamodule.model_inputs(), datamodule.data)

    def on_fit_start(self) -> None:
        self.model.eval()  # frozen: no dropout, whatever Lightning does to the rest

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def training_step(self, dataloader_iter) -> torch.Tensor:
        batch, _, _ = next(dataloader_iter)
        u = self.embed(batch)
        loss = F.cross_entropy(self.class_logits(u), batch["label"].long())
        b = len(batch["user_id"])
        self.log_dict({"train/loss": loss.detach(), "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]},
                      on_step=True, on_epoch=False, batch_size=b, sync_dist=True)  # fmt: skip
        self.step_counts = {"samples": float(b * self.trainer.world_size)}
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        score = self.class_logits(self.embed(batch)).softmax(-1)[:, 1]
        self.val_auc.update(score, batch["label"].long())

    def on_validation_epoch_end(self) -> None:
        self.log("val/auc", self.val_auc.compute(), sync_dist=False)
        self.val_auc.reset()

    def configure_optimizers(self):
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError("set trainer.max_steps (prompt tuning is defined in steps; the paper uses 500)")
        h = self.hparams
        opt = make_optimizer([self.prompt, self.prototypes], getattr(self, "optimizer_init", None),
                             lr=h.lr, weight_decay=h.weight_decay)  # fmt: skip
        sched = warmup_cosine_schedule(
            opt, warmup_steps=h.warmup_steps, total_steps=total, min_lr_ratio=h.min_lr_ratio
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints and the artifact -------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {"prompt", "prototypes"}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_train_end(self) -> None:
        dm = self.trainer.datamodule
        if self.trainer.is_global_zero:
            save_prompt(
                self, Path(self.trainer.default_root_dir) / "prompt", scenario=dm.scenario, query=dm.query
            )


def save_prompt(module: PromptTuneModule, out: Path, *, scenario: str, query: str) -> dict:
    """Write the scenario artifact atomically; returns its description (with the byte size)."""
    out.mkdir(parents=True, exist_ok=True)
    h = module.hparams
    with atomic_path(out / PROMPT_FILE) as tmp:
        save_file({"prompt": module.prompt.detach().cpu().contiguous(),
                   "prototypes": module.prototypes.detach().cpu().contiguous()}, str(tmp))  # fmt: skip
    meta = {
        "scenario": scenario,
        "query": query,
        "n_prompt": h.n_prompt,
        "prototypes_per_class": h.prototypes_per_class,
        "num_classes": h.num_classes,
        "temperature": h.temperature,
        "pretrained": str(h.pretrained),
        "hidden_size": module.model.hidden_size,
        "embed_dim": module.model.embedding_dim,
    }
    write_json(out / PROMPT_META, meta)
    meta["bytes"] = sum((out / f).stat().st_size for f in (PROMPT_FILE, PROMPT_META))
    return meta


def load_prompt(folder: str | Path) -> tuple[dict, torch.Tensor | None, torch.Tensor]:
    """(meta, prompt [n, H] or None, prototypes [K*m, E]) from a prompt artifact folder."""
    folder = Path(folder)
    meta_path = folder / PROMPT_META
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder}: not a prompt artifact ({PROMPT_META} missing)")
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(folder / PROMPT_FILE))
    prompt = tensors["prompt"] if meta["n_prompt"] > 0 else None
    return meta, prompt, tensors["prototypes"]
