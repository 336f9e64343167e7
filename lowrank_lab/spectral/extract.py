"""Per-layer teacher targets for SAD-LoRA (the seed's `extract_teacher_svd`):

    W̃_T = ΔW_T Σ^{1/2} = U S Vᵀ,   u_target = U_r (d_out, r),   sigma_weighted = S_r (r,)
    sigma_target = σ(U_rᵀ ΔW_T) (r,): the spectrum of the data-weighted optimum U_r U_rᵀ ΔW_T (what L_coeff matches)

Pure math on tensors; the cache of these targets per teacher is lowrank_lab.teachers.targets, the CLI
`python -m lowrank_lab.teachers targets …`.
"""

from __future__ import annotations

import torch

from lowrank_lab.spectral.gram import GramAccumulator
from lowrank_lab.spectral.subspace import data_weighted_subspace, data_weighted_subspace_from_gram


def layer_target(delta_w: torch.Tensor, stats: GramAccumulator, rank: int) -> dict[str, torch.Tensor]:
    """ΔW: (d_out, d_in) and its layer's input statistics -> u_target, sigma_weighted, sigma_target (float32).

    Uses the kept rows when there are all of them (implicit SVD of ΔW xᵀ/√n when n < d_in), else the Gram route.
    """
    dw = delta_w.detach().to("cpu", torch.float64)
    r = min(rank, dw.shape[0], dw.shape[1], stats.n)
    sample = stats.sample
    if sample is not None and sample.shape[0] == stats.n:
        U, S = data_weighted_subspace(dw, sample.to("cpu", torch.float64), r)
    else:
        U, S = data_weighted_subspace_from_gram(dw, stats.gram.to("cpu"), stats.n, r)
    sigma = torch.linalg.svdvals(U.T @ dw)  # (r,), descending
    return {"u_target": U.float(), "sigma_weighted": S.float(), "sigma_target": sigma.float()}


def spectral_targets(
    delta: dict[str, torch.Tensor], stats: dict[str, GramAccumulator], rank: int
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> layer_target for every module with a teacher update ΔW_T and calibration statistics."""
    return {name: layer_target(dw, stats[name], rank) for name, dw in delta.items()}
