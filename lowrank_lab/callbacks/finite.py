"""Stop a job the moment its training loss is not finite: a diverged run must fail, not report an accuracy."""

from __future__ import annotations

import lightning as L
import torch

from lowrank_lab.errors import LabError


class NonFiniteLoss(LabError):
    """The training loss became NaN or ±inf; the job ends FAILED with exit code 2."""


class StopOnNonFiniteLoss(L.Callback):
    """Checks the loss before every backward (automatic and manual optimisation alike), so no non-finite
    gradient reaches the weights. Always installed by `lowrank_lab.train`: no method can opt out."""

    def __init__(self, lr_key: str = "method.optimizer.lr") -> None:
        self.lr_key = lr_key

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        raise NonFiniteLoss(
            f"train/loss={float(loss.detach().float().mean())} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}): training diverged; lower {self.lr_key} (lr now {lr:g}) "
            "or set method.grad_clip"
            if lr is not None
            else f"train/loss={float(loss.detach().float().mean())} at step {trainer.global_step}: training diverged"
        )
