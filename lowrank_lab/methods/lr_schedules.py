"""Learning-rate schedules completed inside `configure_optimizers` (configs pass them as `_partial_`)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.06) -> LambdaLR:
    """Linear warm-up over `warmup_ratio·total_steps`, then linear decay to 0."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.06) -> LambdaLR:
    """Linear warm-up, then cosine decay to 0."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.06) -> LambdaLR:
    """Linear warm-up over `warmup_ratio·total_steps`, then constant."""
    warmup = max(1, int(total_steps * warmup_ratio))
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    """No schedule."""
    return LambdaLR(optimizer, lambda step: 1.0)
