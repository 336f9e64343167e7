"""Losses: KD divergences, Grassmann alignment and coefficient matching (SAD-LoRA), α schedules."""

from lowrank_lab.losses.alignment import coefficient_loss, grassmann_alignment, span_basis
from lowrank_lab.losses.divergences import (
    Divergence,
    HiddenCosine,
    JensenShannon,
    KLDivergence,
    LogitMSE,
    ReverseKL,
    TotalVariation,
    kd_loss,
)
from lowrank_lab.losses.schedules import (
    AdaptiveSchedule,
    AlphaSchedule,
    ConstantSchedule,
    CosineDecay,
    LinearWarmup,
)

__all__ = [
    "AdaptiveSchedule",
    "AlphaSchedule",
    "ConstantSchedule",
    "CosineDecay",
    "Divergence",
    "HiddenCosine",
    "JensenShannon",
    "KLDivergence",
    "LinearWarmup",
    "LogitMSE",
    "ReverseKL",
    "TotalVariation",
    "coefficient_loss",
    "grassmann_alignment",
    "kd_loss",
    "span_basis",
]
