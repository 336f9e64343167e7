"""Principal angles between column spans, and the overlap metric logged as spectral/subspace_overlap.

For orthonormal bases Q_A (d, p), Q_B (d, q) the principal angles θ₁ ≤ … ≤ θ_k, k = min(p, q), satisfy

    cos θᵢ = σᵢ(Q_Aᵀ Q_B),   sin θᵢ = σ_{k+1-i}((I − Q_A Q_Aᵀ) Q_B)   (for q ≤ p; Björck & Golub 1973)

Small angles are read from the sines and large ones from the cosines, so both ends are accurate.
"""

from __future__ import annotations

import math

import torch

from lowrank_lab.spectral.subspace import work_dtype


def orthonormal_basis(A: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Orthonormal basis Q (d, rank A) of colspan(A), A: (d, k); QR, with an SVD fallback if rank deficient.

    A = QR and σ(R) = σ(A); directions with σ ≤ rtol·σ_max (default max(d, k)·eps) count as rank deficiency.
    """
    if A.dim() != 2:
        raise ValueError(f"A must be a (d, k) matrix, got shape {tuple(A.shape)}.")
    with torch.autocast(device_type=A.device.type, enabled=False):
        A = A.to(work_dtype(A))
        d, k = A.shape
        if rtol is None:
            rtol = max(d, k) * torch.finfo(A.dtype).eps
        if k == 0 or not bool(A.abs().amax() > 0):
            return A.new_zeros(d, 0)
        Q, R = torch.linalg.qr(A)  # Q (d, min(d, k)), R (min(d, k), k)
        U_R, S, _ = torch.linalg.svd(R)  # small: A = (Q U_R) S Vᵀ
        keep = S > rtol * S[0]
        if bool(keep.all()) and k <= d:
            return Q
        return Q @ U_R[:, keep]


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between colspan(A) and colspan(B); A: (d, p), B: (d, q) -> (k,).

    k = min(rank A, rank B). scipy.linalg.subspace_angles returns the same angles in descending order.
    """
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must have the same number of rows, got {tuple(A.shape)} and {tuple(B.shape)}.")
    dtype = work_dtype(A, B)
    QA = orthonormal_basis(A.to(dtype))
    QB = orthonormal_basis(B.to(device=A.device, dtype=dtype))
    if QA.shape[1] < QB.shape[1]:
        QA, QB = QB, QA  # now q ≤ p
    if QB.shape[1] == 0:
        return QA.new_zeros(0)
    with torch.autocast(device_type=QA.device.type, enabled=False):
        M = QA.T @ QB  # (p, q)
        cos = torch.linalg.svdvals(M).clamp(0.0, 1.0)  # descending -> angles ascending
        sin = torch.linalg.svdvals(QB - QA @ M).clamp(0.0, 1.0).flip(0)  # ascending -> angles ascending
        small = cos.square() >= 0.5  # θ ≤ π/4: arcsin is well conditioned there, arccos is not
        return torch.where(small, torch.arcsin(sin), torch.arccos(cos))


def subspace_overlap(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """‖Q_Aᵀ Q_B‖²_F / r with r = min(rank A, rank B): 1 when one span contains the other, 0 when orthogonal.

    A: (d, p), B: (d, q) -> scalar; equals mean cos²θᵢ over the principal angles.
    """
    dtype = work_dtype(A, B)
    QA = orthonormal_basis(A.to(dtype))
    QB = orthonormal_basis(B.to(device=A.device, dtype=dtype))
    r = min(QA.shape[1], QB.shape[1])
    if r == 0:
        return QA.new_zeros(())
    with torch.autocast(device_type=QA.device.type, enabled=False):
        return (QA.T @ QB).square().sum() / r


def mean_principal_angle(A: torch.Tensor, B: torch.Tensor, degrees: bool = True) -> float:
    """Mean principal angle between colspan(A) (d, p) and colspan(B) (d, q), in degrees by default."""
    theta = principal_angles(A, B)
    if theta.numel() == 0:
        return 0.0
    mean = float(theta.mean())
    return mean * 180.0 / math.pi if degrees else mean
