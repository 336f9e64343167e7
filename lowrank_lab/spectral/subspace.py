"""Data-weighted teacher subspace (SAD-LoRA, phase 1-2).

The target subspace of a teacher update ΔW is spanned by the leading left singular vectors of

    W̃ = ΔW · Σ^{1/2},   Σ = xᵀx / n                         (SAD-LoRA, "data-weighted subspace")

Σ^{1/2} is never formed. Only the left singular pairs are needed and W̃W̃ᵀ = ΔW Σ ΔWᵀ, so any factor
C with CCᵀ = ΔW Σ ΔWᵀ has the same left singular vectors and values:

    n <  d_in:  C = ΔW xᵀ / √n            (d_out, n)      "implicit SVD" of the seed
    n >= d_in:  C = ΔW Rᵀ / √n, x = QR    (d_out, d_in)
    Gram only:  C = ΔW L / √n, xᵀx = LLᵀ  (d_out, d_in)

All work runs in float32 (half/bf16 are upcast) or float64, with autocast disabled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

_METHODS = ("auto", "exact", "randomized")
# method="auto" switches to the randomized SVD when the smaller side of C is at least this large and the
# requested rank (plus oversampling) is a small fraction of it.
_AUTO_RANDOMIZED_MIN_DIM = 4096
_AUTO_RANDOMIZED_MAX_FRACTION = 0.125


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half, bf16 and integer inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(t: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_delta_w(delta_w: torch.Tensor) -> None:
    if delta_w.dim() != 2:
        raise ValueError(f"delta_w must be a (d_out, d_in) matrix, got shape {tuple(delta_w.shape)}.")


def _rows(x: torch.Tensor, d_in: int) -> torch.Tensor:
    """x: (..., d_in) -> (n, d_in)."""
    if x.shape[-1] != d_in:
        raise ValueError(f"x must have last dimension d_in={d_in} (columns of delta_w), got {tuple(x.shape)}.")
    return x.reshape(-1, d_in)


def _resolve_method(method: str, rank: int, k_max: int, oversample: int) -> str:
    """Check method and rank; turn "auto" into "exact" or "randomized"."""
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not allowed; use one of {_METHODS}.")
    if not 1 <= rank <= k_max:
        raise ValueError(f"rank={rank} must be between 1 and min(d_out, d_in, n)={k_max} for this layer and data.")
    if method == "auto":
        big = k_max >= _AUTO_RANDOMIZED_MIN_DIM and rank + oversample <= _AUTO_RANDOMIZED_MAX_FRACTION * k_max
        return "randomized" if big else "exact"
    return method


def _left_svd(
    core: torch.Tensor,
    rank: int,
    method: str,
    oversample: int,
    n_iter: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`rank` left singular pairs of core: (d_out, m) -> U (d_out, rank), S (rank,)."""
    if _resolve_method(method, rank, min(core.shape), oversample) == "exact":
        U, S, _ = torch.linalg.svd(core, full_matrices=False)
        return U[:, :rank], S[:rank]
    return randomized_left_svd(
        lambda v: core @ v,
        lambda u: core.T @ u,
        core.shape[1],
        rank,
        oversample=oversample,
        n_iter=n_iter,
        generator=generator,
        like=core,
    )


def randomized_left_svd(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rmatvec: Callable[[torch.Tensor], torch.Tensor],
    m: int,
    rank: int,
    oversample: int = 10,
    n_iter: int = 4,
    generator: torch.Generator | None = None,
    like: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomized range-finder SVD (Halko et al. 2011) of an implicit C: (d_out, m).

    matvec: v (m, k) -> C v (d_out, k); rmatvec: u (d_out, k) -> Cᵀu (m, k). -> U (d_out, rank), S (rank,).
    """
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    k = min(rank + oversample, m)
    gen_device = generator.device if generator is not None else device  # a CPU generator may drive CUDA work
    omega = torch.randn(m, k, generator=generator, dtype=dtype, device=gen_device).to(device)  # (m, k)
    Q = torch.linalg.qr(matvec(omega)).Q  # (d_out, k)
    for _ in range(n_iter):  # subspace (power) iterations, re-orthonormalised each half step
        P = torch.linalg.qr(rmatvec(Q)).Q  # (m, k)
        Q = torch.linalg.qr(matvec(P)).Q  # (d_out, k)
    small = rmatvec(Q).T  # Qᵀ C: (k, m)
    Uk, S, _ = torch.linalg.svd(small, full_matrices=False)
    return (Q @ Uk)[:, :rank], S[:rank]


@torch.no_grad()
def data_weighted_subspace(
    delta_w: torch.Tensor,
    x: torch.Tensor,
    rank: int,
    method: str = "auto",
    oversample: int = 10,
    n_iter: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`rank` left singular vectors U (d_out, rank) and values S (rank,) of ΔW Σ^{1/2}, Σ = xᵀx/n.

    delta_w: (d_out, d_in); x: (n, d_in) or (..., d_in) uncentred layer inputs; method: exact|randomized|auto.
    """
    _check_delta_w(delta_w)
    with _no_autocast(delta_w):
        dtype = work_dtype(delta_w, x)
        dw = delta_w.detach().to(dtype)
        rows = _rows(x.detach(), dw.shape[1]).to(device=dw.device, dtype=dtype)  # (n, d_in)
        n, d_in = rows.shape
        if n == 0:
            raise ValueError("x has no rows; the data-weighted subspace needs at least one input.")
        scale = 1.0 / math.sqrt(n)
        method = _resolve_method(method, rank, min(dw.shape[0], d_in, n), oversample)
        if method == "randomized":  # C = ΔW xᵀ/√n applied implicitly, never formed
            return randomized_left_svd(
                lambda v: dw @ (rows.T @ v) * scale,
                lambda u: rows @ (dw.T @ u) * scale,
                n,
                rank,
                oversample=oversample,
                n_iter=n_iter,
                generator=generator,
                like=dw,
            )
        if n < d_in:
            core = dw @ rows.T * scale  # (d_out, n)
        else:
            R = torch.linalg.qr(rows, mode="r").R  # (d_in, d_in), xᵀx = RᵀR
            core = dw @ R.T * scale  # (d_out, d_in)
        return _left_svd(core, rank, method, oversample, n_iter, generator)


def gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """L (d, d) with L Lᵀ = gram (d, d): Cholesky, or eigh with negative eigenvalues clipped if not PD."""
    L, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return L
    evals, evecs = torch.linalg.eigh(gram)  # PSD up to round-off: V diag(λ₊) Vᵀ = (V √λ₊)(V √λ₊)ᵀ
    return evecs * evals.clamp_min(0).sqrt()


@torch.no_grad()
def data_weighted_subspace_from_gram(
    delta_w: torch.Tensor,
    gram: torch.Tensor,
    n: int,
    rank: int,
    method: str = "auto",
    oversample: int = 10,
    n_iter: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As data_weighted_subspace, from a precomputed gram = xᵀx (d_in, d_in) summed over n rows.

    E.g. from GramAccumulator. Uses a Cholesky factor of gram (eigh fallback when only semi-definite).
    """
    _check_delta_w(delta_w)
    d_in = delta_w.shape[1]
    if gram.shape != (d_in, d_in):
        raise ValueError(f"gram must be (d_in, d_in)=({d_in}, {d_in}), got {tuple(gram.shape)}.")
    if n <= 0:
        raise ValueError(f"n={n} must be the positive number of rows the Gram matrix was summed over.")
    with _no_autocast(delta_w):
        dtype = work_dtype(delta_w, gram)
        dw = delta_w.detach().to(dtype)
        G = gram.detach().to(device=dw.device, dtype=dtype)
        G = 0.5 * (G + G.T)
        method = _resolve_method(method, rank, min(dw.shape[0], d_in, n), oversample)  # rank ≤ n too
        core = dw @ gram_factor(G) / math.sqrt(n)  # (d_out, d_in)
        return _left_svd(core, rank, method, oversample, n_iter, generator)


@torch.no_grad()
def weighted_error(delta_w: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean_i ‖(ΔW − approx) x_i‖² = tr(E Σ Eᵀ); delta_w, approx: (d_out, d_in); x: (n, d_in) -> scalar."""
    _check_delta_w(delta_w)
    with _no_autocast(delta_w):
        dtype = work_dtype(delta_w, approx, x)
        err = delta_w.detach().to(dtype) - approx.detach().to(device=delta_w.device, dtype=dtype)
        rows = _rows(x.detach(), err.shape[1]).to(device=err.device, dtype=dtype)
        return (rows @ err.T).square().sum(dim=-1).mean()


def eckart_young_bound(S_all: torch.Tensor, rank: int) -> torch.Tensor:
    """Least data-weighted error of a rank-`rank` update: Σ_{i>rank} σᵢ² over the full spectrum S_all (k,)."""
    S_sorted = torch.sort(S_all.detach(), descending=True).values
    return S_sorted[rank:].square().sum()


def best_rank_r(delta_w: torch.Tensor, x: torch.Tensor, rank: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-weighted Eckart–Young optimum B A = U_r U_rᵀ ΔW: B (d_out, rank) = U_r, A (rank, d_in) = U_rᵀ ΔW.

    Its weighted_error equals eckart_young_bound of the full spectrum; kwargs go to data_weighted_subspace.
    """
    U, _ = data_weighted_subspace(delta_w, x, rank, **kwargs)
    with _no_autocast(delta_w):
        return U, U.T @ delta_w.detach().to(U.dtype)
