"""The LightningModule every method subclasses: task loss and metrics, optimizer/scheduler from config, only
trainable (adapter + head) parameters optimised and checkpointed, step timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn

from lowrank_lab.data.task import TaskSpec
from lowrank_lab.errors import bad_value
from lowrank_lab.metrics.evaluators import build_evaluator


class AdapterModule(L.LightningModule):
    """Holds the student; subclasses override `training_loss` (finetune: the task loss alone)."""

    def __init__(
        self,
        student: nn.Module,
        task: TaskSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__()
        self.student = student.train()  # from_pretrained returns eval mode; Lightning keeps modules as it finds them
        self.task = task
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.grad_clip = grad_clip
        self.evaluators = {s: build_evaluator(task, f"{s}/", model=student) for s in ("val", "test")}
        self.val_metrics = self.evaluators["val"].modules()  # registered so metric state follows the device
        self.test_metrics = self.evaluators["test"].modules()
        self.strict_loading = False  # checkpoints hold only trainable weights; the frozen base is rebuilt
        self._step_start = 0.0
        self._train_s_before, self._fit_start = (
            0.0,
            None,
        )  # training seconds of earlier attempts (resumes), this one's start

    # ----- the objective -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.student(**batch)

    def training_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """The loss to minimise; `outputs` is the student's forward on `batch` (loss computed by the head)."""
        return outputs.loss

    def regularizers(self) -> dict[str, torch.Tensor]:
        """Extra terms added to every method's loss and logged as `train/<name>`: KaSA's β·L2 + γ·L3 (`kasa_reg`)
        whenever a model in `adapter_models()` has KaSA layers."""
        from lowrank_lab.adapters.kasa import get_kasa_regularization_loss

        kasa = [t for m in self.adapter_models() if (t := get_kasa_regularization_loss(m)) is not None]
        return {"kasa_reg": torch.stack(kasa).sum()} if kasa else {}

    def adapter_models(self) -> list[nn.Module]:
        """The models whose adapters this method trains (their regularisers join the loss): the student."""
        return [self.student]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """L = training_loss + Σ regularizers for every method: methods override `forward` / `training_loss`, never
        this step (`__init_subclass__` refuses it), so no method drops an adapter's regulariser."""
        return self.regularized(batch, self.training_loss(batch, self(batch)))

    def regularized(self, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        """`loss` + every regulariser (each logged as `train/<name>`); logs `train/loss`."""
        size = self._bs(batch)
        for name, term in self.regularizers().items():
            self.log(f"train/{name}", term, on_step=True, on_epoch=False, batch_size=size)
            loss = loss + term
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        return loss

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "training_step" in vars(cls) and not getattr(cls, "wraps_training_step", False):
            raise TypeError(
                f"{cls.__name__} overrides training_step; override forward / training_loss instead (the base step "
                "adds the adapter's regularisers), or set wraps_training_step = True and end in self.regularized"
            )

    # ----- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> Any:
        outputs = self(batch)
        self.evaluators[stage].update(outputs, batch)
        self.log(f"{stage}/loss", outputs.loss, on_epoch=True, batch_size=self._bs(batch), sync_dist=True)
        return outputs

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.evaluators["val"].compute(), prog_bar=True)
        self.evaluators["val"].reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.evaluators["test"].compute())
        self.evaluators["test"].reset()

    # ----- saving ---------------------------------------------------------------------------------------
    def save_adapters(self, directory: str | Path) -> None:
        """The job's `adapter/` dir: the student's peft adapter. A method that trains several encoders (SLAD)
        overrides this one hook."""
        self.student.save_pretrained(str(directory))

    # ----- optimisation --------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = self.grad_clip if self.grad_clip is not None else gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    # ----- bookkeeping ---------------------------------------------------------------------------------
    def train_seconds(self) -> float:
        """Training wall time over every attempt of this job (kept in the checkpoint), not the time between them."""
        running = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._train_s_before + running

    def on_train_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.log("time/train_s", self.train_seconds())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("time/step_ms", 1000.0 * (time.perf_counter() - self._step_start), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep trainable parameters and buffers only: a LoRA checkpoint stays adapter-sized."""
        trainable_only(self, checkpoint)
        checkpoint["train_seconds"] = self.train_seconds()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        require_own_weights(self, checkpoint)
        self._train_s_before = float(checkpoint.get("train_seconds", 0.0))

    @staticmethod
    def _bs(batch: dict[str, torch.Tensor]) -> int:
        return int(next(iter(batch.values())).shape[0])


def trainable_only(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Drop `module`'s frozen parameters from `checkpoint["state_dict"]` (its keys are `module`'s own names)."""
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}


def require_own_weights(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Refuse a checkpoint that holds none of `module`'s trainable weights (written by another method, or by a
    wrapper around it: `inner.` keys): loading is not strict (the frozen base is not saved): it would load nothing."""
    own = [name for name, p in module.named_parameters() if p.requires_grad]
    saved = checkpoint.get("state_dict", {})
    if own and saved and not any(name in saved for name in own):
        raise bad_value(
            "ckpt_path",
            f"<a checkpoint with keys like {next(iter(saved))}>",
            f"one written by this method ({type(module).__name__}: keys like {own[0]})",
        )
