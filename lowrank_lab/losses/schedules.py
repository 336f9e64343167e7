"""Schedules for α, the weight of SAD-LoRA's alignment term in L_SAD = L_KD + α·L_align + β·L_coeff.

Every schedule is called once per optimisation step as `alpha = schedule(step, alignment=None)` and has
`state_dict()` / `load_state_dict()` so a resumed run continues where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _check_step(step: int) -> int:
    if step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    return int(step)


class AlphaSchedule:
    """Base class: α as a function of the step (and, for adaptive schedules, the current alignment)."""

    def __call__(self, step: int, alignment: float | torch.Tensor | None = None) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Mutable state only (constructor arguments come from the config); empty for stateless schedules."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""


class ConstantSchedule(AlphaSchedule):
    """α(step) = alpha (SAD-LoRA default alpha_align = 1.0)."""

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"alpha={alpha} must be >= 0.")
        self.alpha = float(alpha)

    def __call__(self, step: int, alignment: float | torch.Tensor | None = None) -> float:
        _check_step(step)
        return self.alpha


class LinearWarmup(AlphaSchedule):
    """α(step) = alpha · min(1, step / warmup_steps): 0 at step 0 (LoRA's B = 0 there), ramping to alpha."""

    def __init__(self, alpha: float = 1.0, warmup_steps: int = 100) -> None:
        if alpha < 0:
            raise ValueError(f"alpha={alpha} must be >= 0.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0.")
        self.alpha = float(alpha)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int, alignment: float | torch.Tensor | None = None) -> float:
        step = _check_step(step)
        if self.warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, step / self.warmup_steps)


class CosineDecay(AlphaSchedule):
    """α(step) = final + (alpha − final)·½(1 + cos(π·min(step, total_steps)/total_steps))."""

    def __init__(self, alpha: float = 1.0, total_steps: int = 1000, final: float = 0.0) -> None:
        if alpha < 0 or final < 0:
            raise ValueError(f"alpha={alpha} and final={final} must be >= 0.")
        if total_steps <= 0:
            raise ValueError(f"total_steps={total_steps} must be > 0.")
        self.alpha = float(alpha)
        self.total_steps = int(total_steps)
        self.final = float(final)

    def __call__(self, step: int, alignment: float | torch.Tensor | None = None) -> float:
        progress = min(_check_step(step), self.total_steps) / self.total_steps
        return self.final + (self.alpha - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class AdaptiveSchedule(AlphaSchedule):
    """α driven by the alignment a (Σ sin²θ): raised while a > target, lowered while a < target.

    Update, at most once per step and only when an alignment is given (log-space, so it cannot overflow):
        log α ← clip(log α + gain·(a − target), log min_alpha, log max_alpha)
    """

    def __init__(
        self,
        alpha: float = 1.0,
        target: float = 0.05,
        gain: float = 1.0,
        min_alpha: float = 1e-3,
        max_alpha: float = 10.0,
    ) -> None:
        if not 0 < min_alpha <= max_alpha:
            raise ValueError(
                f"min_alpha={min_alpha}, max_alpha={max_alpha}: need 0 < min_alpha <= max_alpha "
                "(α is updated multiplicatively, so 0 would be absorbing)."
            )
        if not min_alpha <= alpha <= max_alpha:
            raise ValueError(f"alpha={alpha} must lie in [min_alpha, max_alpha]=[{min_alpha}, {max_alpha}].")
        if gain < 0 or target < 0:
            raise ValueError(f"gain={gain} and target={target} must be >= 0.")
        self.initial_alpha = float(alpha)
        self.target = float(target)
        self.gain = float(gain)
        self.min_alpha = float(min_alpha)
        self.max_alpha = float(max_alpha)
        self.alpha = float(alpha)
        self.last_step: int | None = None

    def __call__(self, step: int, alignment: float | torch.Tensor | None = None) -> float:
        step = _check_step(step)
        if alignment is None or step == self.last_step:
            return self.alpha
        a = float(alignment.detach()) if isinstance(alignment, torch.Tensor) else float(alignment)
        log_alpha = math.log(self.alpha) + self.gain * (a - self.target)
        log_alpha = min(max(log_alpha, math.log(self.min_alpha)), math.log(self.max_alpha))
        self.alpha = math.exp(log_alpha)
        self.last_step = step
        return self.alpha

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = float(state["alpha"])
        self.last_step = state.get("last_step")
