"""`optim=` entries: how the method's optimizer (`method.optimizer`, a `_partial_`) is built for the student.

- `optim=default`: as configured; `optim.precondition=true` makes it Riemannian-preconditioned (`prec_reg`, λ).
- `optim=lorafa_frozen_a`: peft's `create_lorafa_optimizer` — "LoRA-FA" of arXiv:2308.03303 (A frozen at its
  init, B's gradient projected by (AAᵀ)⁻¹ / scaling²), a different method from the LoRA-FA seed (see README).

`train.run` calls `instantiate(cfg.optim).attach(module)` once the method's module exists; every method builds its
optimizer through `module.optimizer_factory(params=…)` in `AdapterModule.configure_optimizers`, so it works for all.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from lowrank_lab.errors import bad_value
from lowrank_lab.optim.precondition import lora_pairs, preconditioned


class OptimSpec:
    """`optim=default`: `method.optimizer` unchanged, or preconditioned when `precondition` (Riemannian LoRA)."""

    name = "default"

    def __init__(self, precondition: bool = False, prec_reg: float = 1e-6) -> None:
        if not isinstance(prec_reg, (int, float)) or prec_reg < 0:
            raise bad_value("optim.prec_reg", prec_reg, "a non-negative number (the damping λ of (BᵀB + λI)⁻¹)")
        self.precondition, self.prec_reg = bool(precondition), float(prec_reg)

    def attach(self, module: Any) -> None:
        """Wrap `module.optimizer_factory` (called as factory(params=[…]) in configure_optimizers)."""
        if self.precondition and not lora_pairs(module.student):
            raise bad_value("optim.precondition", True, "false for a student without LoRA factors (e.g. peft=none)")
        module.optimizer_factory = partial(self.build, module.student, module.optimizer_factory)

    def build(self, student: nn.Module, factory: Callable[..., torch.optim.Optimizer], params: list) -> Any:
        optimizer = self.make(student, factory, list(params))
        if self.precondition:
            optimizer = preconditioned(optimizer, lora_pairs(student), self.prec_reg)
        return optimizer

    def make(self, student: nn.Module, factory: Callable[..., torch.optim.Optimizer], params: list) -> Any:
        return factory(params=params)


class FrozenAOptim(OptimSpec):
    """`optim=lorafa_frozen_a`: peft's LoRA-FA optimizer (frozen A); lr and weight_decay from method.optimizer.
    Trainable parameters outside the student (a method's learned maps) join as a plain AdamW group."""

    name = "lorafa_frozen_a"

    def __init__(self, precondition: bool = False, prec_reg: float = 1e-6) -> None:
        super().__init__(precondition, prec_reg)
        if self.precondition:
            raise bad_value("optim.precondition", True, "false with optim=lorafa_frozen_a (it projects B's gradient)")

    def attach(self, module: Any) -> None:
        if not hasattr(module.student, "peft_config"):
            raise bad_value("optim", self.name, "a peft LoRA student (peft=lora, qv, …), not peft=none")
        super().attach(module)

    def make(self, student: nn.Module, factory: Callable[..., torch.optim.Optimizer], params: list) -> Any:
        from peft.optimizers import create_lorafa_optimizer

        keywords = getattr(factory, "keywords", {})
        lr, weight_decay = keywords.get("lr", 1e-3), keywords.get("weight_decay", 0.0)
        config = student.peft_config[student.active_adapter]
        optimizer = create_lorafa_optimizer(student, config.r, config.lora_alpha, lr, weight_decay)  # freezes A
        own = {id(p) for p in student.parameters()}
        extra = [p for p in params if id(p) not in own and p.requires_grad]
        if extra:  # LoraFAOptimizer reads names / scaling_factors per group; non-LoRA names step as AdamW
            optimizer.add_param_group(
                {
                    "params": extra,
                    "names": [f"method.extra.{i}" for i in range(len(extra))],
                    "scaling_factors": [None] * len(extra),
                    "lr": lr,
                    "betas": (0.9, 0.999),
                    "weight_decay": weight_decay,
                }
            )
        return optimizer
