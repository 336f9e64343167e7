"""Adapter specs selected by `peft=`: a LoRA spec (peft's LoraConfig, with the seeds' parameter names) and
full fine-tuning (`peft=none`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, TaskType

from lowrank_lab.errors import bad_value

TASK_TYPES = {"seq_cls": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM}


@dataclass
class LoraSpec:
    """ΔW = scaling·B·A on every `target_modules` match; scaling = lora_alpha / r (or / √r with rsLoRA)."""

    lora_r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other LoraConfig field (use_dora, …)

    def __post_init__(self) -> None:
        if not isinstance(self.lora_r, int) or self.lora_r <= 0:
            raise bad_value("peft.lora_r", self.lora_r, "a positive integer no larger than the adapted layers")
        if self.lora_alpha <= 0:
            raise bad_value("peft.lora_alpha", self.lora_alpha, "a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad_value("peft.lora_dropout", self.lora_dropout, "a number in [0, 1)")

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
            modules_to_save=self.modules_to_save,
            **dict(self.extra),
            **init_kwargs,
        )


@dataclass
class FullFinetune:
    """`peft=none`: no adapter, every parameter trains (the teacher-preparation and time baseline)."""

    def build(self, head: str, default_targets: list[str], init_kwargs: dict[str, Any]) -> None:
        return None
