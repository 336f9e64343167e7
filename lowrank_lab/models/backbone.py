"""Load the student backbone named by `cfg.model`: pretrained weights (packaged, local, hub cache) or a tiny
random-init config, with the head the task needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from lowrank_lab.errors import bad_value
from lowrank_lab.models.resolve import resolve_name_or_path

HEADS = {"seq_cls": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}


@dataclass
class Backbone:
    """A loaded model plus what later stages need to know about it."""

    model: PreTrainedModel
    name_or_path: str
    tokenizer: str
    head: str
    random_init: bool
    lora_targets: list[str] = field(default_factory=list)


def load_backbone(
    name_or_path: str,
    head: str = "seq_cls",
    num_labels: int = 2,
    tokenizer: str | None = None,
    random_init: bool = False,
    config_overrides: dict[str, Any] | None = None,
    lora_targets: list[str] | None = None,
    dtype: str | None = None,
) -> Backbone:
    """Build the backbone; `random_init` builds the architecture from its config (seeded by the caller)."""
    if head not in HEADS:
        raise bad_value("model.head", head, f"one of {sorted(HEADS)}")
    auto = HEADS[head]
    path = resolve_name_or_path(name_or_path)
    overrides = dict(config_overrides or {})
    head_kwargs = {"num_labels": num_labels} if head == "seq_cls" else {}
    torch_dtype = getattr(torch, dtype) if dtype else None
    if random_init:
        config = AutoConfig.from_pretrained(path, **overrides, **head_kwargs)
        model = auto.from_config(config, dtype=torch_dtype)
    else:
        model = auto.from_pretrained(path, **overrides, **head_kwargs, dtype=torch_dtype)
    if head == "seq_cls" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return Backbone(
        model=model,
        name_or_path=name_or_path,
        tokenizer=tokenizer or name_or_path,
        head=head,
        random_init=random_init,
        lora_targets=list(lora_targets or []),
    )
