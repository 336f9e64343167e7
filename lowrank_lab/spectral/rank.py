"""Rank selection from a singular-value spectrum S (k,), any order (sorted descending internally)."""

from __future__ import annotations

import math

import torch


def _spectrum(S: torch.Tensor) -> torch.Tensor:
    if S.dim() != 1:
        raise ValueError(f"S must be a 1-D vector of singular values, got shape {tuple(S.shape)}.")
    if bool((S < 0).any()):
        raise ValueError("S must hold singular values, which are non-negative; got a negative entry.")
    dtype = torch.float64 if S.dtype == torch.float64 else torch.float32
    return torch.sort(S.detach().to(dtype), descending=True).values


def energy_rank(S: torch.Tensor, threshold: float = 0.9) -> int:
    """Smallest k whose top-k energy Σ_{i≤k} σᵢ² reaches `threshold` of Σσᵢ²; S: (k,). 0 for an all-zero S."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1].")
    energy = torch.cumsum(_spectrum(S).square(), dim=0)
    if energy.numel() == 0 or float(energy[-1]) == 0.0:
        return 0
    below = energy < threshold * energy[-1]
    return min(int(below.sum()) + 1, energy.numel())


def pooled_energy_rank(spectra: list[torch.Tensor], threshold: float = 0.9) -> int:
    """Smallest common k whose top-k energy summed over layers, Σ_l Σ_{i≤k} σ_{l,i}², reaches `threshold` of the
    layers' total energy Σ_l ‖σ_l‖²: one rank for every layer (a layer with fewer than k values gives them all).
    spectra: one (k_l,) vector per layer. 0 when every spectrum is zero."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1].")
    sorted_ = [_spectrum(s).double() for s in spectra]
    width = max((s.numel() for s in sorted_), default=0)
    if width == 0:
        return 0
    energy = torch.zeros(width, dtype=torch.float64)
    for s in sorted_:
        if s.numel():
            cum = torch.cumsum(s.square(), dim=0)  # (k_l,), then held at its total up to `width`
            energy += torch.cat([cum, cum[-1].expand(width - cum.numel())])
    if float(energy[-1]) == 0.0:
        return 0
    below = energy < threshold * energy[-1]
    return min(int(below.sum()) + 1, width)


def effective_rank(S: torch.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank exp(H(p)), pᵢ = σᵢ/Σσⱼ, H the Shannon entropy (nats); S: (k,)."""
    s = _spectrum(S)
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    p = s / total
    entropy = -torch.special.xlogy(p, p).sum()  # 0·log 0 = 0
    return float(torch.exp(entropy))


def _lambda_star(beta: float) -> float:
    """Gavish & Donoho optimal threshold coefficient for known noise level, aspect ratio β ∈ (0, 1]."""
    return math.sqrt(2.0 * (beta + 1.0) + 8.0 * beta / ((beta + 1.0) + math.sqrt(beta**2 + 14.0 * beta + 1.0)))


def _omega(beta: float) -> float:
    """Gavish & Donoho ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43 for unknown noise (threshold = ω(β)·median σ)."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def gavish_donoho_threshold(S: torch.Tensor, shape: tuple[int, int], sigma: float | None = None) -> float:
    """Optimal hard threshold τ for the singular values S (min(shape),) of a noisy (m, n) matrix.

    Known noise level σ: τ = λ*(β)·√max(m, n)·σ; unknown: τ = ω(β)·median(S); β = min(m, n)/max(m, n).
    """
    m, n = (int(v) for v in shape)
    if m <= 0 or n <= 0:
        raise ValueError(f"shape={tuple(shape)} must be the (rows, cols) of the matrix, both positive.")
    beta = min(m, n) / max(m, n)
    if sigma is not None:
        if sigma < 0:
            raise ValueError(f"sigma={sigma} is a noise standard deviation and must be >= 0.")
        return _lambda_star(beta) * math.sqrt(max(m, n)) * float(sigma)
    s = _spectrum(S)
    if s.numel() == 0:
        return 0.0
    # median of the full spectrum, averaging the two middle values for an even count
    return _omega(beta) * float(torch.quantile(s, 0.5))


def gavish_donoho_rank(S: torch.Tensor, shape: tuple[int, int], sigma: float | None = None) -> int:
    """Number of singular values above the Gavish–Donoho (2014) optimal hard threshold; S: (min(shape),).

    S should hold the whole spectrum (its median estimates the noise level when sigma is None).
    """
    tau = gavish_donoho_threshold(S, shape, sigma)
    return int((_spectrum(S) > tau).sum())
