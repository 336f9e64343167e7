"""`init=spectral` (SAD-LoRA's spectral initialisation): the adapter starts at the data-weighted Eckart–Young
optimum of the teacher update,

    B = U_r,  A = U_rᵀ ΔW_T / scaling   ⇒   scaling·B·A = U_r U_rᵀ ΔW_T = argmin_{rank ≤ r} E‖(ΔW_T − M) x‖²

with U_r the top-r left singular vectors of ΔW_T Σ^{1/2} over the calibration tokens (the teacher's targets).
Works with any method (finetune, kd, sad); needs a teacher fine-tuned from the student's base.

`peft.lora_r=auto` (the seed's phase 2, rank selection): r is the smallest rank whose top-r data-weighted energy
Σ_{i≤r} σ̃ᵢ² reaches `rank_energy` of ‖ΔW_T Σ^{1/2}‖²_F — pooled over the adapted layers (one r for all), or per
layer with `rank_per_layer=true` (peft's `rank_pattern`: each layer its own r).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.errors import LabError, bad_value
from lowrank_lab.spectral.rank import energy_rank, pooled_energy_rank

SPECTRAL_NEEDS = "init=spectral needs a teacher fine-tuned from the student's base (the SAD teacher)"


class SpectralInit(Initializer):
    """B = U_r (orthonormal), A = U_rᵀ ΔW_T / scaling per adapted layer; U_r from `n_calib` calibration tokens."""

    name = "spectral"
    needs_teacher = True  # apply() also needs the datamodule (calibration); wrap() does not

    def __init__(self, n_calib: int = 2048, rank_energy: float = 0.9, rank_per_layer: bool = False) -> None:
        if n_calib <= 0:
            raise bad_value("init.n_calib", n_calib, "a positive number of calibration tokens")
        if isinstance(rank_energy, bool) or not isinstance(rank_energy, (int, float)) or not 0 < rank_energy <= 1:
            raise bad_value("init.rank_energy", rank_energy, "a fraction in (0, 1] of the data-weighted energy")
        self.n_calib, self.rank_energy, self.rank_per_layer = int(n_calib), float(rank_energy), bool(rank_per_layer)

    def pick_ranks(self, teacher: Any, datamodule: Any) -> dict[str, int]:
        """`peft.lora_r=auto`: teacher module name -> r by the energy rule on the full data-weighted spectrum σ̃
        of every adapted layer (one pooled r, or one per layer); at least 1, at most the layer's own size."""
        datamodule = self.require_data(datamodule)
        if teacher is None or not getattr(teacher, "sad_style", False):
            raise LabError(SPECTRAL_NEEDS)
        full = max(min(dw.shape) for dw in teacher.delta.values())  # every singular value (clipped per layer)
        targets = teacher.targets(datamodule, full, self.n_calib)
        spectra = {name: targets[name]["sigma_weighted"] for name in teacher.delta}  # (k_l,) descending
        if self.rank_per_layer:
            return {name: max(1, energy_rank(s, self.rank_energy)) for name, s in spectra.items()}
        r = max(1, pooled_energy_rank(list(spectra.values()), self.rank_energy))
        return {name: min(r, *teacher.delta[name].shape) for name in spectra}

    @torch.no_grad()
    def apply(self, model: nn.Module, datamodule: Any = None, teacher: Any = None) -> None:
        from lowrank_lab.adapters.kasa import unit_diag_where_initialised
        from lowrank_lab.adapters.wrap import adapted_modules

        datamodule = self.require_data(datamodule)
        if teacher is None or not getattr(teacher, "sad_style", False):
            raise LabError(SPECTRAL_NEEDS)
        layers = adapted_modules(model)
        rank = max(int(layer.r[layer.active_adapters[0]]) for layer in layers.values())
        targets = teacher.targets(datamodule, rank, self.n_calib)
        for name, layer in layers.items():
            match = [t for t in targets if name == t or name.endswith("." + t)]
            if not match:
                raise LabError(f"{SPECTRAL_NEEDS}; it has no update for {name}")
            adapter = layer.active_adapters[0]
            B, A = layer.lora_B[adapter].weight, layer.lora_A[adapter].weight  # (d_out, r), (r, d_in)
            U = targets[match[0]]["u_target"][:, : B.shape[1]].to(B.device, torch.float32)  # (d_out, r') r' ≤ r
            delta = teacher.delta[match[0]].to(B.device, torch.float32)  # ΔW_T (d_out, d_in)
            k = U.shape[1]  # the data may hold fewer than r directions; the rest of B, A stay zero
            B.zero_()
            A.zero_()
            B[:, :k] = U.to(B.dtype)
            A[:k] = (U.T @ delta / layer.scaling[adapter]).to(A.dtype)  # scaling·B·A = U Uᵀ ΔW_T
        unit_diag_where_initialised(model)
