"""Wrap a backbone with the adapter named by `peft=` and initialise it with `init=`; check targets and rank
against the real layer shapes first."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.adapters.lora import LoraSpec
from lowrank_lab.errors import bad_value
from lowrank_lab.models.backbone import Backbone


def _check_targets(model: nn.Module, config: Any, spec: LoraSpec) -> None:
    """Every target must match a layer and r must not exceed any matched layer's smaller dimension."""
    matched = {name: m for name, m in model.named_modules() if name and check_target_module_exists(config, name)}
    matched = {n: m for n, m in matched.items() if getattr(m, "weight", None) is not None}
    if not matched:
        leaves = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise bad_value(
            "peft.target_modules", list(config.target_modules), f"matches no layer; linear layers: {leaves}"
        )
    smallest = min(min(m.weight.shape[:2]) for m in matched.values())
    if spec.lora_r > smallest:
        raise bad_value("peft.lora_r", spec.lora_r, f"at most {smallest}, the smallest adapted layer dimension")


def wrap(backbone: Backbone, spec: Any, init: Initializer | None = None) -> nn.Module:
    """Return the model to train: a peft model (only adapters + task head trainable) or, for `peft=none`,
    the backbone with every parameter trainable."""
    init = init or Initializer()
    config = spec.build(backbone.head, backbone.lora_targets, init.lora_kwargs())
    if config is None:
        backbone.model.requires_grad_(True)
        return backbone.model
    _check_targets(backbone.model, config, spec)
    return get_peft_model(backbone.model, config)


def adapted_modules(model: nn.Module) -> dict[str, LoraLayer]:
    """Name -> LoRA layer for every adapted module of a peft model (empty for full fine-tuning)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
