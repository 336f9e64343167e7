"""The init mechanism every `init=` entry goes through: kwargs for LoraConfig before wrapping, then an optional
data/teacher-aware `apply` after wrapping."""

from __future__ import annotations

from typing import Any

import torch.nn as nn


class Initializer:
    """Base: peft's default (A Kaiming-uniform, B = 0, so ΔW = 0 at step 0)."""

    needs_data: bool = False
    needs_teacher: bool = False

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": True}

    def apply(self, model: nn.Module, datamodule: Any = None, teacher: Any = None) -> None:
        """Post-wrap initialisation; the default has nothing to do."""


class PeftBuiltinInit(Initializer):
    """A peft built-in chosen by `init_lora_weights` (`pissa`, `pissa_niter_4`, `olora`, `orthogonal`, …)."""

    def __init__(self, init_lora_weights: str | bool = True, niter: int | None = None) -> None:
        self.value = f"pissa_niter_{niter}" if init_lora_weights == "pissa" and niter else init_lora_weights

    def lora_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": self.value}
