"""`callbacks.best_checkpoint`: keep the checkpoint that scored best on the task's own monitor metric
(`val/<task.metric>`: max for accuracy/F1/MCC/Spearman/mIoU, min for perplexity/MSE/loss), beside last.ckpt."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

LOWER_IS_BETTER = ("perplexity", "mse", "loss")


def monitor_mode(metric: str) -> str:
    """`min` for metrics where lower is better (perplexity, mse, loss), else `max`."""
    return "min" if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"


class BestCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose `monitor: null` means the module's task metric (`pl_module.task.monitor`), with the
    mode that metric needs; the task is known only once the datamodule is set up, so it is read in `setup`
    (before Lightning restores a resumed callback's state, whose key includes the monitor)."""

    def __init__(self, **kwargs: Any) -> None:
        self.auto_monitor = kwargs.get("monitor") is None
        super().__init__(**kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        task = getattr(pl_module, "task", None)
        if self.auto_monitor and task is not None:
            self.monitor = task.monitor
            self.mode = monitor_mode(task.metric)
            self.kth_value = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        super().setup(trainer, pl_module, stage)
