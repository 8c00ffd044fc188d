"""Hyperparameters with real metrics in TensorBoard's HPARAMS view (no placeholder ``hp_metric``).

At the end of training (before Lightning closes the logger) the module's hyperparameters and the
data's (prefixed ``data.``) are logged with the last value of every loss and validation metric,
so runs can be compared side by side.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """``hp/<name>``: the last logged value of every ``train/loss*`` and ``val/*`` metric."""
    metrics = trainer.callback_metrics
    keep = [k for k in metrics if k.startswith(("train/loss", "val/"))]
    return {f"hp/{k.replace('/', '_')}": float(metrics[k]) for k in sorted(keep)}


class HParamsWithMetrics(L.Callback):
    """Logs hyperparameters together with :func:`final_metrics` when training ends."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, TensorBoardLogger) or not trainer.is_global_zero:
            return
        params = dict(pl_module.hparams)
        if trainer.datamodule is not None:
            params.update({f"data.{k}": v for k, v in trainer.datamodule.hparams.items()})
        logger.log_hyperparams(params, metrics=final_metrics(trainer) or {"hp/none": 0.0})
        logger.experiment.flush()
