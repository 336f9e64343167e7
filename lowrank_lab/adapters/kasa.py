"""KaSA (Knowledge-aware Singular-value Adaptation, arXiv:2412.06071) through peft's `KasaLinearVariant`: the
`peft=kasa` spec, the layers it can adapt, and the regulariser every method adds to its loss.

    W ← U_{k−r} Σ_{k−r} V_{k−r}ᵀ        (the r smallest singular components of W dropped, k = min(d_out, d_in))
    ΔW = scaling · B · diag(ΔΣ) · A     (ΔΣ = lora_diag ∈ ℝʳ, B = 0 at step 0)
    L = L_task + β·‖ΔΣ‖² + γ·(‖BᵀB − I‖_F + ‖AAᵀ − I‖_F)      (Eq. 9–11)

The truncation is destructive: reloading an adapter (`PeftModel.from_pretrained`, `load_adapter`) redoes it on a
fresh base, deterministically (a full SVD; the rank-(k−r) part does not depend on singular-vector signs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from peft import KasaConfig, PeftModel
from peft.tuners.lora import LoraLayer, LoraModel
from peft.tuners.lora.variants import KasaLinearVariant

from lowrank_lab.adapters.lora import VARIANT_FIELDS, LoraSpec
from lowrank_lab.errors import bad_value

__all__ = [
    "KasaLinearVariant",
    "KasaSpec",
    "delta_weight",
    "get_kasa_regularization_loss",
    "kasa_layers",
    "unit_diag_where_initialised",
    "uses_kasa",
]


@dataclass
class KasaSpec(LoraSpec):
    """`peft=kasa`: LoRA with peft's KaSA variant; `kasa.beta` (β, L2 on ΔΣ), `kasa.gamma` (γ, orthogonality)."""

    kasa: dict[str, float] = field(default_factory=lambda: {"beta": 1e-4, "gamma": 1e-3})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kasa = dict(self.kasa)
        for name in ("beta", "gamma"):
            value = self.kasa.get(name, 0.0)
            if not isinstance(value, (int, float)) or value < 0:
                raise bad_value(f"peft.kasa.{name}", value, "a non-negative number")
        unknown = sorted(set(self.kasa) - {"beta", "gamma"})
        if unknown:
            raise bad_value("peft.kasa", unknown[0], "only `beta` and `gamma`")
        mixed = [k for k in VARIANT_FIELDS if k != "kasa_config" and ({"use_dora": self.use_dora} | self.extra).get(k)]
        if mixed:
            raise bad_value(f"peft.{mixed[0]}", True, "false with peft=kasa (KaSA is not combined with other variants)")
        if self.extra.get("fan_in_fan_out"):
            raise bad_value("peft.extra.fan_in_fan_out", True, "false with peft=kasa (KaSA adapts (out, in) weights)")

    def variant_kwargs(self) -> dict[str, Any]:
        return {"kasa_config": KasaConfig(beta=float(self.kasa["beta"]), gamma=float(self.kasa["gamma"]))}

    def check(self, layers: dict[str, nn.Module], init: Any) -> None:
        """nn.Linear targets only (no embeddings, convs, MHA, Conv1D), r < min(d_out, d_in), layers built once."""
        for name, module in layers.items():
            if not isinstance(module, nn.Linear):
                allowed = f"nn.Linear layers only with peft=kasa; {name!r} is {type(module).__name__}"
                raise bad_value("peft.target_modules", self.target_modules, allowed)
        smallest = min(min(m.weight.shape) for m in layers.values())
        if self.lora_r >= smallest:
            allowed = f"less than {smallest} with peft=kasa (KaSA keeps k − r ≥ 1 of the k = {smallest} components)"
            raise bad_value("peft.lora_r", self.lora_r, allowed)
        if getattr(init, "rebuilds_layers", False):
            allowed = "an init that keeps its adapter layers with peft=kasa (rebuilding one truncates its base again)"
            raise bad_value("init", getattr(init, "name", type(init).__name__), allowed)

    def after_wrap(self, model: nn.Module) -> None:
        unit_diag_where_initialised(model)


def kasa_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Name -> LoRA layer for every layer carrying a KaSA adapter (a `lora_diag` entry)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and getattr(m, "lora_diag", None)}


def uses_kasa(config: Any) -> bool:
    """Whether a LoraConfig (or its dict form) selects the KaSA variant."""
    value = config.get("kasa_config") if isinstance(config, dict) else getattr(config, "kasa_config", None)
    return value is not None


@torch.no_grad()
def unit_diag_where_initialised(model: nn.Module) -> None:
    """ΔΣ ← 1 on KaSA layers whose B an init has set (PiSSA, OLoRA, …), so ΔW₀ = scaling·B₀A₀ as that init
    promises; with B = 0 (KaSA's own init) peft's ΔΣ ~ N(0, I) is kept. Inits that write B after wrapping call it."""
    for layer in kasa_layers(model).values():
        for adapter, diag in layer.lora_diag.items():
            if bool(layer.lora_B[adapter].weight.any()):
                diag.fill_(1.0)


def delta_weight(layer: LoraLayer, adapter: str = "default") -> torch.Tensor:
    """ΔW (d_out, d_in) of one adapted layer as merging adds it: scaling·B·diag(ΔΣ)·A for KaSA (peft's
    `Linear.get_delta_weight` leaves ΔΣ out), scaling·B·A otherwise."""
    if isinstance(layer.lora_variant.get(adapter), KasaLinearVariant):
        return KasaLinearVariant._get_delta_weight(layer, adapter)
    return layer.get_delta_weight(adapter)


def _lora_models(model: nn.Module) -> list[LoraModel]:
    if isinstance(model, PeftModel):  # the usual student: O(1), no module walk per step
        return [model.base_model] if isinstance(model.base_model, LoraModel) else []
    return [m for m in model.modules() if isinstance(m, LoraModel)]


def get_kasa_regularization_loss(model: nn.Module) -> torch.Tensor | None:
    """Σ over KaSA layers of β·‖ΔΣ‖² + γ·(‖BᵀB − I‖_F + ‖AAᵀ − I‖_F) (peft's `LoraModel._get_kasa_loss`, β and γ
    from each adapter's KasaConfig), a scalar tensor; None when `model` has no KaSA adapter."""
    total: torch.Tensor | None = None
    for lora_model in _lora_models(model):
        if not any(uses_kasa(c) for c in lora_model.peft_config.values()):
            continue
        loss = lora_model._get_kasa_loss()
        if isinstance(loss, torch.Tensor):
            total = loss if total is None else total + loss
    return total
