"""Distillation divergences between student and teacher outputs (LoRA-FA's "tunable divergence").

Each class is an nn.Module usable as a Hydra `_target_`, called as

    loss = divergence(student, teacher, temperature=1.0, mask=None)   # student, teacher: (..., V)

and returns the mean over positions (every index but the last) where mask (shape (...), bool) is True.
Distribution divergences compare softmax(teacher/T) and softmax(student/T) and are multiplied by T²
(Hinton et al. 2015), so the gradient scale does not depend on T:

    L_KD = T² · KL(softmax(t/T) ‖ softmax(s/T))                              (Hinton et al., Eq. 2)

The teacher is not detached here: the caller decides (SLAD trains the teacher too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """per_position: (...) -> mean over positions with mask True; 0 (graph kept) when nothing is selected."""
    if mask is None:
        return per_position.mean()
    if mask.shape != per_position.shape:
        raise ValueError(
            f"mask must have the positions' shape {tuple(per_position.shape)} (outputs minus the last dim), "
            f"got {tuple(mask.shape)}."
        )
    keep = mask.to(device=per_position.device, dtype=torch.bool)
    total = torch.where(keep, per_position, torch.zeros_like(per_position)).sum()
    return total / keep.sum().clamp_min(1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dim from log-probabilities: (..., V) -> (...); terms with p = 0 count 0."""
    p = log_p.exp()
    support = p > 0
    diff = torch.where(support, log_p - log_q, torch.zeros_like(log_p))  # avoids 0·(−inf) = nan
    return (p * diff).sum(dim=-1)


class Divergence(nn.Module):
    """Base: subclasses define per_position(student, teacher, temperature) -> (...)."""

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """student, teacher: (..., V); mask: (...) bool or None -> scalar mean over kept positions."""
        if student.shape != teacher.shape:
            raise ValueError(
                f"student and teacher outputs must have the same shape, got {tuple(student.shape)} "
                f"and {tuple(teacher.shape)}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        with torch.autocast(device_type=student.device.type, enabled=False):
            per = self.per_position(_float(student), _float(teacher).to(student.device), temperature)
            return _masked_mean(per, mask)


class _SoftenedDivergence(Divergence):
    """T² · D(softmax(t/T), softmax(s/T)) with D defined on log-probabilities."""

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        log_s = F.log_softmax(student / temperature, dim=-1)
        log_t = F.log_softmax(teacher / temperature, dim=-1)
        return temperature**2 * self.on_log_probs(log_s, log_t)

    def on_log_probs(self, log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class KLDivergence(_SoftenedDivergence):
    """Forward KL(p_T ‖ p_S) (mass-covering; the standard KD loss)."""

    def on_log_probs(self, log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        return _kl(log_t, log_s)


class ReverseKL(_SoftenedDivergence):
    """Reverse KL(p_S ‖ p_T) (mode-seeking)."""

    def on_log_probs(self, log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        return _kl(log_s, log_t)


class JensenShannon(_SoftenedDivergence):
    """Jensen–Shannon divergence ½KL(p_T ‖ m) + ½KL(p_S ‖ m), m = (p_T + p_S)/2, in nats (≤ log 2)."""

    def on_log_probs(self, log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        log_m = torch.logaddexp(log_s, log_t) - math.log(2.0)  # log((p_S + p_T) / 2)
        return 0.5 * (_kl(log_t, log_m) + _kl(log_s, log_m))


class TotalVariation(_SoftenedDivergence):
    """Total variation ½ Σ |p_T − p_S| (in [0, 1] before the T² factor)."""

    def on_log_probs(self, log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
        return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(dim=-1)


class LogitMSE(Divergence):
    """Mean squared logit difference mean_v (s_v − t_v)²; T²·MSE(s/T, t/T) is the same, so T drops out."""

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return (student - teacher).square().mean(dim=-1)


class HiddenCosine(Divergence):
    """1 − cos(student, teacher) along the last dim (hidden states or logits); scale invariant, T ignored."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=self.eps)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    regression: bool = False,
    divergence: nn.Module | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit distillation loss -> scalar; student_logits, teacher_logits: (..., V) or (batch,) for regression.

    regression=True (e.g. STS-B): MSE between the outputs, temperature unused. Otherwise divergence(student,
    teacher, temperature, mask), KLDivergence by default.
    """
    if regression:
        s, t = _float(student_logits), _float(teacher_logits)
        if s.shape != t.shape:
            raise ValueError(f"regression outputs must have the same shape, got {tuple(s.shape)} and {tuple(t.shape)}.")
        per = (s - t).square()
        if mask is None:
            return per.mean()
        return _masked_mean(per.reshape(mask.shape + (-1,)).mean(dim=-1), mask)
    divergence = divergence if divergence is not None else KLDivergence()
    return divergence(student_logits, teacher_logits, temperature=temperature, mask=mask)
