"""Learning-rate schedules: transformers' named schedules, with the warm-up given as a fraction of the run.

Configs pass `schedule` as `_partial_` (`name`, `warmup_ratio`); `configure_optimizers` completes it with the optimizer
and the run's total steps, which only the Trainer knows.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, name: str = "constant_with_warmup", warmup_ratio: float = 0.06
) -> LambdaLR:
    """transformers' `get_scheduler(name)` (linear, cosine, constant_with_warmup, constant, …) over `total_steps`,
    warming up linearly for ⌈warmup_ratio·total_steps⌉ of them."""
    from transformers import get_scheduler

    warmup = math.ceil(warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
