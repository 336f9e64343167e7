"""Adapter specs selected by `peft=`: a LoRA spec (peft's LoraConfig, with the seeds' parameter names; DoRA, q/v
and all-linear are entries of it) and full fine-tuning (`peft=none`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from peft import LoraConfig, TaskType

from lowrank_lab.errors import bad_value

TASK_TYPES = {"seq_cls": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM}
# LoraConfig fields that switch on a LoRA variant (use_dora, kasa_config, …): peft composes at most one per layer.
VARIANT_FIELDS = tuple(f.name for f in dataclasses.fields(LoraConfig) if f.metadata.get("is_lora_variant"))


@dataclass
class LoraSpec:
    """ΔW = scaling·B·A on every `target_modules` match; scaling = lora_alpha / r (or / √r with rsLoRA).
    `use_dora`: W' = m · (W + ΔW) / ‖W + ΔW‖_c (DoRA, a learnable magnitude per output column)."""

    lora_r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other LoraConfig field (fan_in_fan_out, …)

    def __post_init__(self) -> None:
        if not isinstance(self.lora_r, int) or self.lora_r <= 0:
            raise bad_value("peft.lora_r", self.lora_r, "a positive integer no larger than the adapted layers")
        if self.lora_alpha <= 0:
            raise bad_value("peft.lora_alpha", self.lora_alpha, "a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad_value("peft.lora_dropout", self.lora_dropout, "a number in [0, 1)")
        self.extra = dict(self.extra or {})

    def variant_kwargs(self) -> dict[str, Any]:
        """LoraConfig fields of this entry's LoRA variant (none for plain LoRA)."""
        return {"use_dora": self.use_dora}

    def build(self, head: str, default_targets: list[str], init_kwargs: dict[str, Any]) -> LoraConfig:
        """The peft LoraConfig for a backbone with task head `head`."""
        targets = self.target_modules or default_targets
        if not targets:
            raise bad_value("peft.target_modules", targets, "a list of module names (e.g. [query, value])")
        return LoraConfig(
            task_type=TASK_TYPES.get(head),
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(targets) if not isinstance(targets, str) else targets,
            use_rslora=self.use_rslora,
            bias=self.bias,
            modules_to_save=list(self.modules_to_save) if self.modules_to_save else None,
            **{**self.variant_kwargs(), **self.extra, **init_kwargs},
        )

    def check(self, layers: dict[str, nn.Module], init: Any) -> None:
        """Reject a rank larger than the smallest adapted layer: r ≤ min(d_out, d_in) for every target."""
        sized = [m.weight.shape[:2] for m in layers.values() if getattr(m, "weight", None) is not None]
        smallest = min((min(shape) for shape in sized), default=None)
        if smallest is not None and self.lora_r > smallest:
            raise bad_value("peft.lora_r", self.lora_r, f"at most {smallest}, the smallest adapted layer dimension")

    def after_wrap(self, model: nn.Module) -> None:
        """Adjust the freshly wrapped model (plain LoRA and DoRA: nothing to do)."""


@dataclass
class FullFinetune:
    """`peft=none`: no adapter, every parameter trains (the teacher-preparation and time baseline).

    Adapter settings an experiment file gives its LoRA arms (`peft: {lora_r: 8}`) mean nothing here and are
    accepted, so the same sweep can run its `peft=none` arm (experiment=slad `arm=ft_both peft=none`)."""

    def __init__(self, **adapter_settings: Any) -> None:
        self.ignored = adapter_settings

    def build(self, head: str, default_targets: list[str], init_kwargs: dict[str, Any]) -> None:
        return None
