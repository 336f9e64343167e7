"""The four rank-r solvers compared on a SyntheticSetting, and the split of their error.

    weight-SVD   B A = P_r ΔW,  P_r the top-r left singular projector of ΔW          (unweighted truncation)
    SAD-init     B = U_r, A = U_rᵀ ΔW,  U_r the top-r left singular vectors of W̃      (init=spectral)
    KD-LoRA      min_{B,A} L_KD = E‖(W0 + ΔW)x − (W0 + B A)x‖²  from peft's init=default (B = 0, A ~ U(±1/√d_in))
    SAD-Align    min_{B,A} L_KD + α · L_align(B, U_r)                                 (SAD-LoRA, β = 0)

For any B, with P_B the projector onto colspan(B), the data-weighted error splits by Pythagoras:

    E‖(ΔW − BA)x‖² = ‖(I − P_B) W̃‖²_F + ‖(P_B ΔW − BA) Σ^{1/2}‖²_F
                   = [bound + misalignment] + coefficient,    bound = Σ_{i>r} σᵢ²(W̃)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lowrank_lab.losses import grassmann_alignment, kd_loss
from lowrank_lab.spectral import (
    best_rank_r,
    data_weighted_subspace,
    eckart_young_bound,
    mean_principal_angle,
    orthonormal_basis,
    weighted_error,
)
from lowrank_lab.synthetic.inits import initial_factors
from lowrank_lab.synthetic.setting import SyntheticSetting


@dataclass
class TrainConfig:
    """Adam on the full batch in float64; cosine-decayed lr, gradient clipping 1.0 (SAD-LoRA default)."""

    steps: int = 300
    early_step: int = 50  # the "short budget": the error is also recorded after this many steps
    lr: float = 0.05
    alpha_align: float = 1.0  # α of SAD-Align (KD-LoRA uses 0)
    clip: float = 1.0
    seed: int = 0


def weight_svd(setting: SyntheticSetting, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted truncation: B (d_out, r) = top-r left singular vectors of ΔW, A (r, d_in) = Bᵀ ΔW."""
    U = torch.linalg.svd(setting.delta_w, full_matrices=False).U[:, :rank]
    return U, U.T @ setting.delta_w


def sad_init(setting: SyntheticSetting, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-weighted Eckart–Young optimum B = U_r, A = U_rᵀ ΔW (init=spectral)."""
    return best_rank_r(setting.delta_w, setting.x, rank, method="exact")


def train_lora(
    setting: SyntheticSetting, rank: int, alpha_align: float, cfg: TrainConfig
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA from peft's init=default (seeded by cfg.seed) trained on L_KD (+ α·L_align if alpha_align > 0).

    -> {step: (B (d_out, r), A (r, d_in))} at cfg.early_step and cfg.steps.
    """
    d_out = setting.delta_w.shape[0]
    B0, A0, _ = initial_factors(setting, "default", rank, cfg.seed)  # B₀ = 0, base W0
    B, A = B0.clone().requires_grad_(), A0.clone().requires_grad_()
    u_target = data_weighted_subspace(setting.delta_w, setting.x, rank, method="exact")[0] if alpha_align else None
    x, y_teacher, w0 = setting.x, setting.y, setting.w0
    opt = torch.optim.Adam([B, A], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 1e-3)
    snapshots = {}
    for step in range(1, cfg.steps + 1):
        y_student = x @ (w0 + B @ A).T  # (n, d_in) -> (n, d_out)
        loss = kd_loss(y_student, y_teacher, regression=True) * d_out  # L_KD = E‖y_T − y_S‖² (undo mean over d_out)
        if u_target is not None:
            loss = loss + alpha_align * grassmann_alignment(B, u_target)  # + α Σ sin²θᵢ (0 while B = 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([B, A], cfg.clip)
        opt.step()
        sched.step()
        if step in (cfg.early_step, cfg.steps):
            snapshots[step] = (B.detach().clone(), A.detach().clone())
    return snapshots


Solver = Callable[[SyntheticSetting, int, TrainConfig], dict[int, tuple[torch.Tensor, torch.Tensor]]]
SOLVERS: dict[str, Solver] = {  # method -> {training step: (B, A)}; 0 for the closed forms
    "kd_lora": lambda setting, rank, cfg: train_lora(setting, rank, 0.0, cfg),
    "sad_align": lambda setting, rank, cfg: train_lora(setting, rank, cfg.alpha_align, cfg),
    "sad_init": lambda setting, rank, cfg: {0: sad_init(setting, rank)},
    "weight_svd": lambda setting, rank, cfg: {0: weight_svd(setting, rank)},
}
METHODS = tuple(SOLVERS)


def solve(setting: SyntheticSetting, method: str, rank: int, cfg: TrainConfig) -> dict[int, tuple[torch.Tensor, ...]]:
    """Adapter (B, A) of one method at one rank, keyed by training step (0 for the closed-form methods)."""
    if method not in SOLVERS:
        raise ValueError(f"method={method!r} is not allowed; use one of {METHODS}.")
    return SOLVERS[method](setting, rank, cfg)


def error_split(setting: SyntheticSetting, B: torch.Tensor, A: torch.Tensor) -> dict[str, float]:
    """Error of B A over the Eckart–Young bound, split as ratio = 1 + misalignment + coefficient (all / bound).

    Also the mean principal angle (degrees) between colspan(B) and the target subspace U_r.
    """
    dw, x, rank = setting.delta_w, setting.x, B.shape[1]
    bound = float(eckart_young_bound(setting.sigma_tilde, rank))  # Σ_{i>r} σᵢ²(W̃)
    Q = orthonormal_basis(B)  # (d_out, rank B)
    projected = Q @ (Q.T @ dw)  # P_B ΔW
    subspace = float(weighted_error(dw, projected, x))  # ‖(I − P_B) W̃‖²_F ≥ bound
    coefficient = float(weighted_error(projected, B @ A, x))  # ‖(P_B ΔW − BA) Σ^{1/2}‖²_F
    total = float(weighted_error(dw, B @ A, x))
    u_target = data_weighted_subspace(dw, x, rank, method="exact")[0]
    return {
        "ratio": total / bound,
        "misalignment": (subspace - bound) / bound,
        "coefficient": coefficient / bound,
        "angle_deg": mean_principal_angle(B, u_target) if Q.shape[1] else 90.0,
        "bound": bound,
    }
