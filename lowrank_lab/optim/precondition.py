"""Riemannian-preconditioned LoRA updates (Zhang & Pilanci, arXiv:2402.02347; LoRA-FA's `prec_reg`):

    g_A ← (BᵀB + λI)⁻¹ g_A          g_B ← g_B (AAᵀ + λI)⁻¹          (λ = prec_reg, both r × r)

applied to every adapted layer's (A (r, d_in), B (d_out, r)) gradients just before the wrapped optimizer's own
step, so any torch optimizer (SGD, AdamW, …) consumes the preconditioned gradients. peft's
`create_riemannian_optimizer` does the same but refuses a `step(closure)`, which is how Lightning steps every
optimizer, and inverts with `pinv`, whose relative cutoff drops directions near λ; here the closure (forward,
backward, clipping) runs first and the r × r systems are solved exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Pair = tuple[nn.Parameter, nn.Parameter]  # (lora_A.weight (r, d_in), lora_B.weight (d_out, r))


def lora_pairs(model: nn.Module) -> list[Pair]:
    """(A, B) weight pairs of every LoRA layer's adapters in `model` with at least one factor trainable."""
    from lowrank_lab.adapters.wrap import adapted_modules

    pairs = []
    for layer in adapted_modules(model).values():
        for name, lora_a in getattr(layer, "lora_A", {}).items():
            a, b = lora_a.weight, layer.lora_B[name].weight
            if a.requires_grad or b.requires_grad:
                pairs.append((a, b))
    return pairs


def _damped_solve(gram: torch.Tensor, rhs: torch.Tensor, reg: float) -> torch.Tensor:
    """(gram + reg·I)⁻¹ rhs; gram: (r, r) symmetric PSD, rhs: (r, k)."""
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return torch.linalg.solve(gram + reg * eye, rhs)


@torch.no_grad()
def precondition_grads(pairs: list[Pair], reg: float) -> None:
    """Replace each pair's gradients in place by the Riemannian-preconditioned ones (float32 or better)."""
    for a, b in pairs:
        dtype = torch.promote_types(a.dtype, torch.float32)
        with torch.autocast(device_type=a.device.type, enabled=False):
            A, B = a.detach().to(dtype), b.detach().to(dtype)  # (r, d_in), (d_out, r)
            if a.grad is not None:
                g = _damped_solve(B.T @ B, a.grad.to(dtype), reg)  # (r, r)⁻¹ (r, d_in)
                a.grad.copy_(g.to(a.grad.dtype))
            if b.grad is not None:
                g = _damped_solve(A @ A.T, b.grad.to(dtype).T, reg).T  # ((AAᵀ + λI)⁻¹ g_Bᵀ)ᵀ = g_B (AAᵀ + λI)⁻¹
                b.grad.copy_(g.to(b.grad.dtype))


_CLASSES: dict[type, type] = {}


def _preconditioned_class(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of `cls` whose step runs the closure, preconditions the LoRA gradients, then steps `cls`."""
    if cls not in _CLASSES:

        def step(self: torch.optim.Optimizer, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
            loss = None
            if closure is not None:  # Lightning: forward, backward, on_before_optimizer_step, clipping
                with torch.enable_grad():
                    loss = closure()
            precondition_grads(self.lora_pairs, self.prec_reg)
            cls.step(self)
            return loss

        # the same __name__ as `cls`: Lightning's LR monitor logs `lr-AdamW` with or without preconditioning, so a
        # sweep over optim.precondition compares one metric; the qualname and the `preconditioned` flag tell them apart
        attrs = {"step": step, "preconditioned": True, "__qualname__": f"Preconditioned{cls.__name__}"}
        _CLASSES[cls] = type(cls.__name__, (cls,), attrs)
    return _CLASSES[cls]


def preconditioned(optimizer: torch.optim.Optimizer, pairs: list[Pair], prec_reg: float = 1e-6) -> Any:
    """`optimizer` (already built, any class) turned into its preconditioned variant in place: same param groups,
    state and state_dict, so LR schedulers and checkpoints see the optimizer they expect."""
    if prec_reg < 0:
        raise ValueError(f"prec_reg={prec_reg} must be >= 0")
    optimizer.__class__ = _preconditioned_class(type(optimizer))
    optimizer.lora_pairs, optimizer.prec_reg = list(pairs), float(prec_reg)
    return optimizer
