"""PretrainModule: Q-Anchor pretraining (anchored InfoNCE over the global batch + answer NTP).

The whole step reads top to bottom in :meth:`PretrainModule.training_step`. Conventions that make
runs resumable exactly:
- batches come from ``dataloader_iter`` (no prefetch ahead of the saved loader state);
- randomness inside a step (dropout) is seeded from (seed, step, rank), so it does not depend on
  what else consumed the global RNG before a resume;
- checkpoints keep only trainable weights; the frozen backbone is rebuilt from its source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

from data_modules.util.hashing import stable_hash64
from qanchor_pl.model.config import DataInputs, ModelSpec, QAnchorConfig, coerce
from qanchor_pl.model.qanchor import QAnchorModel
from qanchor_pl.train.future import FutureHeads, FutureSpec
from qanchor_pl.train.grad_cache import (
    GradCacheSpec,
    cached_forward,
    chunk_batches,
    embedding_gradients,
    replay_backward,
)
from qanchor_pl.train.losses import anchored_infonce
from qanchor_pl.train.optim import build_optimizer


@dataclass(frozen=True)
class ContrastiveSpec:
    """The anchored InfoNCE settings; each switch is one of the paper's ablations."""

    enabled: bool = True  # False = "w/o contrastive" (the semantic tower is skipped)
    weight: float = 1.0
    temperature: float = 0.07
    learnable_temperature: bool = False
    margin: float | None = 0.1  # None = "w/o margin filter"
    # The filter starts after this many steps. A fresh projection head maps every user to nearly
    # the same point, so each u_j looks closer to u_i than v_i does, the filter removes every
    # negative and the loss is 0 with no gradient: with 0 here a run can stay dead forever.
    margin_warmup_steps: int = 100
    uv: bool = True  # negatives u_i . v_j
    uu: bool = True  # negatives u_i . u_j
    vv: bool = True  # negatives v_i . v_j
    gather: bool = True  # negatives from every rank (the global batch)


def plain(obj: Any) -> Any:
    """A dataclass as nested dicts/lists of primitives."""

    def convert(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [convert(v) for v in x]
        return x

    return convert(asdict(obj))


def step_seed(seed: int, step: int, rank: int) -> int:
    """A per-(seed, step, rank) RNG seed: dropout masks depend on where the run is, not on history."""
    return stable_hash64(f"{seed}:{step}:{rank}", "little") & 0x7FFF_FFFF_FFFF_FFFF


class PretrainModule(L.LightningModule):
    """Pretrains a :class:`QAnchorModel` on UserU QA pairs.

    Args:
        arch: the model's architecture (:class:`ModelSpec`: backbone, tiny shape, LoRA, head,
            structural tokens, embedding, event time/counts), declared once there. Its
            ``embedding: null`` means ``head`` when the contrastive loss trains the head, else
            ``hidden`` (an untrained head is noise).
        contrastive: anchored InfoNCE settings (see :class:`ContrastiveSpec`).
        ntp_weight: weight of the answer next-token loss; 0 = "w/o NTP" (no LM head is computed).
        future: the future-behaviour anchor on u (see :class:`~qanchor_pl.train.future.FutureSpec`;
            weight 0 = off, the paper's objective). Needs pretraining data built with
            ``--future_events`` (and ``data.future_negatives`` for the dense form).
        reconstruction_weight: weight of the decoder from u to the user's log counts per
            (modality, category); 0 = off.
        grad_cache: the gradient cache (see :class:`~qanchor_pl.train.grad_cache.GradCacheSpec`):
            the backbone runs ``chunk_size`` rows at a time, the gradients stay the plain step's.
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with linear warmup then cosine
            decay to ``lr * min_lr_ratio`` at ``trainer.max_steps``.
        seed: seeds the per-step RNG (dropout).
        inputs: the data description; ``None`` = taken from the trainer's DataModule at fit time.
    """

    def __init__(
        self,
        arch: ModelSpec = ModelSpec(),
        contrastive: ContrastiveSpec = ContrastiveSpec(),
        ntp_weight: float = 1.0,
        future: FutureSpec = FutureSpec(),
        reconstruction_weight: float = 0.0,
        grad_cache: GradCacheSpec = GradCacheSpec(),
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        inputs: DataInputs | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Plain values only: checkpoints are read back with torch.load(weights_only=True).
        for key, value in list(self.hparams.items()):
            if is_dataclass(value):
                self.hparams[key] = plain(value)
        self.contrastive = coerce(ContrastiveSpec, contrastive)
        self.future_spec = coerce(FutureSpec, future)
        self.grad_cache = coerce(GradCacheSpec, grad_cache)
        self.anchors_u = self.future_spec.weight > 0 or reconstruction_weight > 0
        if not self.contrastive.enabled and ntp_weight <= 0 and not self.anchors_u:
            raise ValueError("every loss is off: enable contrastive, or set ntp_weight, future.weight "
                             "or reconstruction_weight > 0")  # fmt: skip
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(self.contrastive.temperature)),
            requires_grad=self.contrastive.learnable_temperature,
        )
        self.model: QAnchorModel | None = None
        self.heads: FutureHeads | None = None
        self.step_counts: dict[str, float] = {}  # read by callbacks (throughput, sample audit)
        self.step_users: list[str] = []
        if inputs is not None:
            self._build(coerce(DataInputs, inputs))

    # -- model construction ---------------------------------------------------------------------
    def model_config(self, inputs: DataInputs) -> QAnchorConfig:
        arch = ModelSpec.from_any(self.hparams.arch)
        fields = arch.arch_fields()
        trains_head = self.contrastive.enabled or self.anchors_u
        fields["embedding"] = arch.embedding or ("head" if trains_head else "hidden")
        return QAnchorConfig(inputs=inputs, **fields)

    def _build(self, inputs: DataInputs) -> None:
        self.model = QAnchorModel(self.model_config(inputs))
        if self.anchors_u:
            with torch.random.fork_rng(devices=[]):  # the model's own init stays as without the heads
                self.heads = FutureHeads(
                    self.model.embedding_dim, self.model.user_encoder.category_index, list(inputs.modalities),
                    dict(inputs.event_dims), self.future_spec, self.hparams.reconstruction_weight > 0,
                )  # fmt: skip
        self.hparams["inputs"] = plain(inputs)  # so load_from_checkpoint rebuilds the same model

    def configure_model(self) -> None:
        if self.model is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "model_inputs"):
            raise ValueError("PretrainModule needs `inputs` or a trainer DataModule with model_inputs()")
        self._build(DataInputs(**dm.model_inputs()))

    def on_fit_start(self) -> None:
        if not self.grad_cache.chunk_size:
            return
        if self.trainer.accumulate_grad_batches > 1:
            raise ValueError(
                "model.grad_cache.chunk_size with trainer.accumulate_grad_batches > 1: accumulation splits "
                "the contrastive batch (fewer negatives); the gradient cache keeps it whole, use it alone"
            )
        if self._uses_deepspeed():
            raise ValueError(
                "model.grad_cache.chunk_size is not supported under DeepSpeed: its engine owns the "
                "backward pass and cannot take the cache's per-chunk backward passes. Use strategy ddp "
                "(with LoRA the optimizer state is small, so ZeRO saves little; see the grad-cache overlay)"
            )

    def active_margin(self) -> float | None:
        cl = self.contrastive
        return cl.margin if self.global_step >= cl.margin_warmup_steps else None

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=1e-3)

    # -- the step -------------------------------------------------------------------------------
    def batch_losses(
        self, batch: dict[str, Any], u: torch.Tensor, v: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The losses that couple the batch's users through u and v (anchored InfoNCE, the future
        anchor, the count reconstruction), weighted and summed; and their loggable scalars."""
        cl = self.contrastive
        loss = u.new_zeros((), dtype=torch.float32)
        scalars: dict[str, torch.Tensor] = {}
        if cl.enabled:
            loss_cl, stats = anchored_infonce(
                u,
                v,
                self.temperature,
                margin=self.active_margin(),
                uv=cl.uv,
                uu=cl.uu,
                vv=cl.vv,
                gather=cl.gather,
            )
            loss = loss + cl.weight * loss_cl
            scalars |= {
                "train/loss_cl": loss_cl.detach(),
                "train/pos_sim": torch.tensor(stats.pos_sim),
                "train/neg_sim": torch.tensor(stats.neg_sim),
                "train/masked_fraction": torch.tensor(stats.masked_fraction),
            }
        if self.future_spec.weight > 0:
            loss_future = self.heads.future_loss(batch, u)
            loss = loss + self.future_spec.weight * loss_future
            scalars["train/loss_future"] = loss_future.detach()
        if self.hparams.reconstruction_weight > 0:
            loss_rec = self.heads.reconstruction_loss(batch, u)
            loss = loss + self.hparams.reconstruction_weight * loss_rec
            scalars["train/loss_reconstruction"] = loss_rec.detach()
        return loss, scalars

    def _finish_scalars(self, batch: dict[str, Any], scalars: dict[str, torch.Tensor],
                        ntp_loss: torch.Tensor | None, loss: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        if ntp_loss is not None:
            scalars["train/loss_ntp"] = ntp_loss.detach()
        scalars["train/loss"] = loss.detach()
        if "answer_truncated" in batch:  # answers cut at max_answer_tokens: their NTP target is partial
            scalars["train/answer_truncated_frac"] = batch["answer_truncated"].float().mean()
        return scalars

    def compute_loss(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """Loss of one batch, its loggable scalars (local) and token/sample counts (local)."""
        use_ntp = self.hparams.ntp_weight > 0
        out = self.model(batch, semantic=self.contrastive.enabled, ntp=use_ntp)
        loss, scalars = self.batch_losses(batch, out.u, out.v)
        if use_ntp:
            loss = loss + self.hparams.ntp_weight * out.ntp_loss
        scalars = self._finish_scalars(batch, scalars, out.ntp_loss, loss)
        counts = {"samples": float(out.u.shape[0]), "tokens": float(out.anchor_tokens + out.answer_tokens),
                  "slots": float(out.slots)}  # fmt: skip
        return loss, scalars, counts

    def compute_loss_cached(
        self, batch: dict[str, Any], backward: Callable[[torch.Tensor], None]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """The same step through the gradient cache (see :mod:`qanchor_pl.train.grad_cache`).

        Every chunk but the last is back-propagated here with ``backward``; the returned tensor is
        the last chunk's surrogate plus the batch losses (its backward completes the step's
        gradients; its value is not the loss, which is in the scalars)."""
        semantic, ntp_weight = self.contrastive.enabled, self.hparams.ntp_weight
        rows = int(batch["query_ids"].shape[0])
        chunks = chunk_batches(batch, rows, self.grad_cache.chunk_size)
        cache = cached_forward(self.model, chunks, semantic=semantic, ntp=ntp_weight > 0, device=self.device)
        u = cache.u.detach().requires_grad_()
        v = cache.v.detach().requires_grad_() if cache.v is not None else None
        batch_loss, scalars = self.batch_losses(batch, u, v)
        du, dv = embedding_gradients(batch_loss, u, v)
        last = replay_backward(self.model, chunks, cache, du, dv, semantic=semantic, ntp_weight=ntp_weight,
                               backward=backward)  # fmt: skip
        loss_value = batch_loss.detach() + (ntp_weight * cache.ntp_loss if ntp_weight > 0 else 0.0)
        scalars = self._finish_scalars(batch, scalars, cache.ntp_loss, loss_value)
        counts = {"samples": float(rows), "tokens": float(cache.anchor_tokens + cache.answer_tokens),
                  "slots": float(cache.slots)}  # fmt: skip
        return last + batch_loss, scalars, counts

    def _backward_now(self, loss: torch.Tensor) -> None:
        """A backward pass inside the step, scaled as Lightning scales the returned loss (a 16-bit
        loss scaler); under DDP it accumulates without syncing (see the grad_cache module)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # Lightning zeroes the gradients between training_step and its backward; the cache's
        # chunks have back-propagated inside training_step by then, so it zeroes them first instead.
        if not self.grad_cache.chunk_size:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def training_step(self, dataloader_iter) -> torch.Tensor:
        batch, _, _ = next(dataloader_iter)
        torch.manual_seed(step_seed(self.hparams.seed, self.global_step, self.global_rank))
        if self.grad_cache.chunk_size:
            self.zero_grad(set_to_none=True)  # (instead of Lightning's optimizer_zero_grad, see there)
            loss, scalars, counts = self.compute_loss_cached(batch, self._backward_now)
        else:
            loss, scalars, counts = self.compute_loss(batch)
        self.step_users = list(batch["user_id"])
        self._log_step(scalars, counts, batch_size=len(self.step_users))
        return loss

    def _log_step(self, scalars: dict[str, torch.Tensor], counts: dict[str, float], batch_size: int) -> None:
        """One all-reduce for every scalar: means of the losses, sums of the counts over ranks."""
        names = list(scalars)
        local = torch.stack([scalars[n].float().to(self.device) for n in names] + [
            torch.tensor(counts[k], device=self.device) for k in ("samples", "tokens", "slots")
        ])  # fmt: skip
        world = self.trainer.world_size
        total = self.trainer.strategy.reduce(local, reduce_op="sum") if world > 1 else local
        values = {n: total[i] / world for i, n in enumerate(names)}
        values["train/temperature"] = self.temperature.detach()
        values["train/lr"] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        self.log("loss", values["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        # slots: padded positions through both towers (1 - tokens / slots is the padding fraction)
        self.step_counts = {
            "samples": float(total[-3]),
            "tokens": float(total[-2]),
            "slots": float(total[-1]),
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not self._uses_deepspeed():
            norm = torch.nn.utils.get_total_norm(grads)  # before clipping
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def _uses_deepspeed(self) -> bool:
        return type(self.trainer.strategy).__name__.startswith("DeepSpeed")

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        total = self.trainer.max_steps
        if total is None or total <= 0:
            raise ValueError(
                "set trainer.max_steps: the cosine schedule and exact resume are defined in steps "
                "(max_epochs alone is not supported)"
            )
        h = self.hparams
        opt, sched = build_optimizer(
            self,
            lr=h.lr,
            weight_decay=h.weight_decay,
            betas=tuple(h.betas),
            warmup_steps=h.warmup_steps,
            total_steps=total,
            min_lr_ratio=h.min_lr_ratio,
            optimizer_init=getattr(self, "optimizer_init", None),  # set by `--optimizer` (the CLI)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: trainable weights only ----------------------------------------------------
    def trainable_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["qanchor"] = {"trainable_only": True, "model_config": self.model.config.to_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is None:  # built lazily: the checkpoint says how
            self._build(QAnchorConfig.from_dict(checkpoint["qanchor"]["model_config"]).inputs)
        if "state_dict" not in checkpoint:  # DeepSpeed: its engine restores the (sharded) weights
            return
        missing = sorted(self.trainable_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[:3]}); "
                "was it written by a different model configuration?"
            )
