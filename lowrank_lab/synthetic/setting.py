"""Linear teacher–student generator for the SAD-LoRA theorem checks.

Teacher y = (W0 + ΔW) x, student y = (W0 + B A) x, with x ~ rows of X (n, d_in) whose sample covariance is
exactly the requested Σ (Gaussian draws whitened to ΔW-independent exact moments, then coloured by Σ^{1/2}):

    ΔW = U diag(s) Vᵀ,   Σ = Xᵀ X / n = Q diag(λ) Qᵀ,   W̃ = ΔW Σ^{1/2}           (SAD-LoRA, data-weighted update)

Spectra s (k = min(d_out, d_in) values): sharp (exponential), gradual (power law), flat (linear 1 -> 1/2).
Covariances: isotropic (Σ = I), aligned (Q = V, variance largest where ΔW is strongest), misaligned
(Q = V reversed, variance largest where ΔW is weakest). λ is geometric with condition number `cond`.
ΔW is scaled so the data-weighted energy E‖ΔW x‖² = ‖W̃‖²_F is 1; everything is float64 and seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SPECTRA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # i = 0..k-1 -> s_i (unnormalised)
    "sharp": lambda i: torch.exp(-i / 2.0),  # s_i = e^{-i/2}: a few directions carry everything
    "gradual": lambda i: 1.0 / (i + 1.0),  # s_i = 1/(i+1)
    "flat": lambda i: 1.0 - 0.5 * i / max(len(i) - 1, 1),  # s_i from 1 to 1/2, small gaps
}
COVARIANCES = ("isotropic", "aligned", "misaligned")


@dataclass
class SyntheticSetting:
    """One teacher–student problem; matrices are float64. x (n, d_in), y (n, d_out) = x (W0 + ΔW)ᵀ."""

    spectrum: str
    covariance: str
    w0: torch.Tensor  # (d_out, d_in) frozen base weight
    delta_w: torch.Tensor  # (d_out, d_in) teacher update ΔW
    x: torch.Tensor  # (n, d_in) inputs, xᵀx/n = Σ exactly
    sigma: torch.Tensor  # (d_in, d_in) input covariance Σ
    s: torch.Tensor  # (k,) singular values of ΔW (after normalisation)

    @property
    def y(self) -> torch.Tensor:
        """Teacher outputs (n, d_out)."""
        return self.x @ (self.w0 + self.delta_w).T

    @property
    def sigma_tilde(self) -> torch.Tensor:
        """All singular values of W̃ = ΔW Σ^{1/2}, descending (k,)."""
        return torch.linalg.svdvals(self.delta_w @ sqrtm_psd(self.sigma))


def _haar(gen: torch.Generator, d: int, k: int) -> torch.Tensor:
    """Random orthonormal columns (d, k) (QR of a Gaussian with the sign fixed, so Haar distributed)."""
    Q, R = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))


def sqrtm_psd(S: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root (d, d) -> (d, d)."""
    evals, evecs = torch.linalg.eigh(S)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def make_setting(
    spectrum: str = "gradual",
    covariance: str = "misaligned",
    d_out: int = 48,
    d_in: int = 32,
    n: int = 256,
    cond: float = 100.0,
    seed: int = 0,
) -> SyntheticSetting:
    """Seeded linear teacher–student problem; same arguments -> bit-identical tensors."""
    if spectrum not in SPECTRA:
        raise ValueError(f"spectrum={spectrum!r} is not allowed; use one of {tuple(SPECTRA)}.")
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance={covariance!r} is not allowed; use one of {COVARIANCES}.")
    if n < d_in:
        raise ValueError(f"n={n} must be at least d_in={d_in} so that xᵀx/n can equal a full-rank Σ.")
    gen = torch.Generator().manual_seed(seed)
    k = min(d_out, d_in)
    U = _haar(gen, d_out, k)  # (d_out, k)
    V_full = _haar(gen, d_in, d_in)  # (d_in, d_in); ΔW uses its first k columns
    s = SPECTRA[spectrum](torch.arange(k, dtype=torch.float64))  # (k,)
    delta_w = (U * s) @ V_full[:, :k].T  # ΔW = U diag(s) Vᵀ
    w0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / d_in**0.5

    lam = cond ** -(torch.arange(d_in, dtype=torch.float64) / max(d_in - 1, 1))  # λ_1 = 1 ≥ … ≥ λ_d = 1/cond
    if covariance == "isotropic":
        sigma = torch.eye(d_in, dtype=torch.float64)
    else:
        Q = V_full if covariance == "aligned" else V_full.flip(1)  # misaligned: most variance on weakest v_i
        sigma = (Q * lam) @ Q.T  # Σ = Q diag(λ) Qᵀ
    sigma = sigma * d_in / torch.trace(sigma)  # tr Σ = d_in, as for Σ = I

    z = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    L = torch.linalg.cholesky(z.T @ z / n)
    z = torch.linalg.solve_triangular(L, z.T, upper=False).T  # zᵀz/n = I exactly
    x = z @ sqrtm_psd(sigma)  # (n, d_in), xᵀx/n = Σ

    energy = torch.trace(delta_w @ sigma @ delta_w.T)  # ‖W̃‖²_F = tr(ΔW Σ ΔWᵀ)
    scale = energy.rsqrt()
    return SyntheticSetting(spectrum, covariance, w0, delta_w * scale, x, sigma, s * scale)
