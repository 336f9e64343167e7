"""Wrap a backbone with the adapter named by `peft=` and initialise it with `init=`; check targets, rank, layer
types and the init against the real layers first."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.adapters.kasa import uses_kasa
from lowrank_lab.errors import bad_value
from lowrank_lab.models.backbone import Backbone


def _targets(model: nn.Module, config: Any) -> dict[str, nn.Module]:
    """Name -> module for every layer `config.target_modules` selects; at least one must match."""
    matched = {name: m for name, m in model.named_modules() if name and check_target_module_exists(config, name)}
    if not matched:
        leaves = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise bad_value(
            "peft.target_modules", sorted(config.target_modules), f"matches no layer; linear layers: {leaves}"
        )
    return matched


def check_adapter_mix(existing: dict[str, Any] | None, config: Any) -> None:
    """KaSA truncates the base, so a model carries KaSA adapters only or non-KaSA adapters only."""
    for name, other in (existing or {}).items():
        if uses_kasa(other) != uses_kasa(config):
            kinds = ("KaSA", "non-KaSA") if uses_kasa(config) else ("non-KaSA", "KaSA")
            allowed = f"adapters of one kind: a {kinds[0]} adapter cannot join the {kinds[1]} adapter {name!r}"
            raise bad_value("peft", "kasa" if uses_kasa(config) else "non-kasa", allowed)


def wrap(backbone: Backbone, spec: Any, init: Initializer | None = None, datamodule: Any = None) -> nn.Module:
    """Return the model to train: a peft model (only adapters + task head trainable) or, for `peft=none`,
    the backbone with every parameter trainable. `datamodule` feeds inits that need a data pass."""
    init = init or Initializer()
    config = spec.build(backbone.head, backbone.lora_targets, init.lora_kwargs())
    if config is None:
        if type(init) is not Initializer:
            raise bad_value("init", init.name, "default with peft=none (there is no adapter to initialise)")
        backbone.model.requires_grad_(True)
        return backbone.model
    config = _maybe_include_all_linear_layers(config, backbone.model)  # "all-linear" -> the layer names
    if backbone.modules_to_save and not getattr(config, "modules_to_save", None):
        config.modules_to_save = list(backbone.modules_to_save)  # heads peft cannot infer (vision: no task type)
    layers = _targets(backbone.model, config)
    spec.check(layers, init)
    init.check(spec, layers)
    if init.needs_data:
        init.require_data(datamodule)
    check_adapter_mix(getattr(backbone.model, "peft_config", None), config)
    model = init.wrap(backbone.model, config, datamodule)
    spec.after_wrap(model)
    return model


def adapted_modules(model: nn.Module) -> dict[str, LoraLayer]:
    """Name -> LoRA layer for every adapted module of a peft model (empty for full fine-tuning)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
