"""SAD-LoRA's adapter-to-teacher losses: Grassmann alignment of colspan(B) and coefficient matching.

    L_SAD = L_KD + α · L_align + β · L_coeff                                  (SAD-LoRA, main objective)
    L_align = Σᵢ sin²θᵢ(colspan B, colspan U) = r − ‖Q_Bᵀ U‖²_F,  r = min(rank B, r_t)

Rule at LoRA step 0 (B = 0): colspan(B) is undefined, so grassmann_alignment returns a zero that stays in the
graph (zero gradient). The KD term moves B off zero and the alignment acts from the next step on; start
from init=spectral to have it act from step 0.
"""

from __future__ import annotations

import torch


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_pair(B: torch.Tensor, U: torch.Tensor) -> None:
    if B.dim() != 2 or U.dim() != 2 or B.shape[0] != U.shape[0]:
        raise ValueError(
            f"B (d_out, r) and U (d_out, r_t) must be matrices with the same rows, got {tuple(B.shape)} "
            f"and {tuple(U.shape)}."
        )


def span_basis(B: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Differentiable orthonormal basis Q (d_out, rank B) of colspan(B), B: (d_out, r), B ≠ 0.

    Full column rank: reduced QR (column signs do not matter, only Q Qᵀ is used). Rank k < r: QR of B V_k,
    V_k the top-k right singular vectors of B held constant: same span, finite gradients (SVD's are nan).
    """
    d, r = B.shape
    if rtol is None:
        rtol = max(d, r) * torch.finfo(B.dtype).eps
    if r <= d:
        Q, R = torch.linalg.qr(B)  # Q (d, r), R (r, r)
        S = torch.linalg.svdvals(R.detach())  # σ(R) = σ(B)
        if bool(S[-1] > rtol * S[0]):
            return Q
    _, S, Vh = torch.linalg.svd(B.detach(), full_matrices=False)
    V_k = Vh[S > rtol * S[0]].T  # (r, k)
    return torch.linalg.qr(B @ V_k).Q  # (d, k)


def grassmann_alignment(B: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Σ sin²θᵢ between colspan(B), B: (d_out, r), and the orthonormal target U: (d_out, r_t) -> scalar.

    Equals r − ‖Q_Bᵀ U‖²_F (r = min(rank B, r_t)): 0 when one span contains the other, r when orthogonal.
    Differentiable in B; a zero B gives a zero that keeps the graph (see module docstring).
    """
    _check_pair(B, U)
    with torch.autocast(device_type=B.device.type, enabled=False):
        dtype = _work_dtype(B, U)
        Bw = B.to(dtype)
        Uw = U.to(device=B.device, dtype=dtype)
        if not bool(Bw.detach().abs().amax() > 0):
            return (Bw * 0).sum()  # LoRA step 0: colspan(B) undefined, no alignment signal
        Q = span_basis(Bw)  # (d_out, k)
        M = Q.T @ Uw  # (k, r_t): cosines of the principal angles are its singular values
        # Written as a squared residual, not r − ‖M‖², so it stays ≥ 0 and accurate for tiny angles
        # (in float32, 1 − cos²θ loses everything below θ ≈ 0.02°).
        if Q.shape[1] >= Uw.shape[1]:
            residual = Uw - Q @ M  # (I − Q Qᵀ) U: ‖·‖² = r_t − ‖M‖²
        else:
            residual = Q - Uw @ M.T  # (I − U Uᵀ) Q: ‖·‖² = k − ‖M‖²
        return residual.square().sum()


def coefficient_loss(
    B: torch.Tensor,
    A: torch.Tensor,
    U: torch.Tensor,
    sigma_target: torch.Tensor,
    scaling: float = 1.0,
) -> torch.Tensor:
    """Relative squared error of the adapter's singular values inside the target subspace -> scalar.

    s = top-k svdvals(Uᵀ·scaling·B A), k = len(sigma_target); loss = Σ(sᵢ − σᵢ)² / Σσᵢ², i.e. the MSE
    divided by the mean square of sigma_target, so it is scale free (1 at B = 0). B: (d_out, r), A: (r, d_in),
    U: (d_out, r_t) orthonormal, sigma_target: (k,) with k ≤ min(r_t, d_in), not all zero.
    """
    _check_pair(B, U)
    if A.dim() != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(f"A must be (r, d_in) with r={B.shape[1]} (columns of B), got {tuple(A.shape)}.")
    k = sigma_target.numel()
    if not 1 <= k <= min(U.shape[1], A.shape[1]):
        raise ValueError(
            f"sigma_target has {k} values; it must have between 1 and min(r_t, d_in)={min(U.shape[1], A.shape[1])}."
        )
    with torch.autocast(device_type=B.device.type, enabled=False):
        dtype = _work_dtype(B, A, U, sigma_target)
        Uw = U.to(device=B.device, dtype=dtype)
        M = scaling * ((Uw.T @ B.to(dtype)) @ A.to(dtype))  # (r_t, d_in) = Uᵀ ΔW_adapter, never (d_out, d_in)
        s = torch.linalg.svdvals(M)[:k]  # descending; svdvals has stable gradients
        target = torch.sort(sigma_target.to(device=B.device, dtype=dtype).reshape(-1), descending=True).values
        denom = target.square().sum().clamp_min(torch.finfo(dtype).tiny)
        return (s - target).square().sum() / denom
