"""Adapter specs selected by `peft=`: a LoRA spec (peft's LoraConfig, with the seeds' parameter names; DoRA, q/v
and all-linear are entries of it) and full fine-tuning (`peft=none`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from peft import LoraConfig, TaskType
from peft.utils.other import get_pattern_key

from lowrank_lab.errors import bad_value

TASK_TYPES = {"seq_cls": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM}
# LoraConfig fields that switch on a LoRA variant (use_dora, kasa_config, …): peft composes at most one per layer.
VARIANT_FIELDS = tuple(f.name for f in dataclasses.fields(LoraConfig) if f.metadata.get("is_lora_variant"))
AUTO = "auto"  # `peft.lora_r=auto`: an init that can (init=spectral) picks the ranks; `lora_alpha: auto` follows them
AUTO_NEEDS = "a positive integer, or 'auto' with init=spectral (r picked from the teacher's data-weighted spectrum)"


@dataclass
class LoraSpec:
    """ΔW = scaling·B·A on every `target_modules` match; scaling = lora_alpha / r (or / √r with rsLoRA).
    `use_dora`: W' = m · (W + ΔW) / ‖W + ΔW‖_c (DoRA, a learnable magnitude per output column).
    `lora_r: auto` stays pending until `adapters.rank.resolve_auto_rank` gives it a number and a `rank_pattern`
    (layer -> r, peft's per-layer ranks; `alpha_pattern` likewise for lora_alpha)."""

    lora_r: int | str = 8
    lora_alpha: float | str = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other LoraConfig field (fan_in_fan_out, …)
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    def __post_init__(self) -> None:
        positive_int = isinstance(self.lora_r, int) and not isinstance(self.lora_r, bool) and self.lora_r > 0
        if self.lora_r != AUTO and not positive_int:
            raise bad_value("peft.lora_r", self.lora_r, AUTO_NEEDS)
        if self.lora_alpha == AUTO:
            if self.lora_r != AUTO:
                raise bad_value("peft.lora_alpha", self.lora_alpha, "a positive number ('auto' only with lora_r=auto)")
        elif not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise bad_value("peft.lora_alpha", self.lora_alpha, "a positive number")
        for key, pattern in (("peft.rank_pattern", self.rank_pattern), ("peft.alpha_pattern", self.alpha_pattern)):
            values = list((pattern or {}).values())
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
                raise bad_value(key, dict(pattern), "a mapping of layer name -> positive number")
        self.rank_pattern = {k: int(v) for k, v in self.rank_pattern.items()} if self.rank_pattern else None
        self.alpha_pattern = dict(self.alpha_pattern) if self.alpha_pattern else None
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
            **({"rank_pattern": dict(self.rank_pattern)} if self.rank_pattern else {}),
            **({"alpha_pattern": dict(self.alpha_pattern)} if self.alpha_pattern else {}),
            **{**self.variant_kwargs(), **self.extra, **init_kwargs},
        )

    def rank_of(self, name: str) -> int:
        """The rank peft gives the layer `name`: its `rank_pattern` entry (peft's own matching), else lora_r."""
        key = get_pattern_key(list(self.rank_pattern or {}), name)
        return (self.rank_pattern or {}).get(key, self.lora_r)

    def check(self, layers: dict[str, nn.Module], init: Any) -> None:
        """Reject a rank larger than its layer: r ≤ min(d_out, d_in) for every target (its own r with a
        rank_pattern); `lora_r: auto` must have been resolved by an init that picks ranks."""
        if self.lora_r == AUTO:
            raise bad_value("peft.lora_r", self.lora_r, AUTO_NEEDS)
        sizes = {name: min(m.weight.shape[:2]) for name, m in layers.items() if getattr(m, "weight", None) is not None}
        if not self.rank_pattern:
            smallest = min(sizes.values(), default=None)
            if smallest is not None and self.lora_r > smallest:
                allowed = f"at most {smallest}, the smallest adapted layer dimension"
                raise bad_value("peft.lora_r", self.lora_r, allowed)
        for name, size in sizes.items():
            if self.rank_pattern and self.rank_of(name) > size:
                allowed = f"at most {size}, the smallest dimension of the adapted layer {name} (peft.rank_pattern)"
                raise bad_value("peft.lora_r", self.rank_of(name), allowed)

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
