"""`peft.lora_r=auto`: the init picks the ranks before the adapter is built (train.py: teacher → resolve → wrap),
and the job records what was picked (`adapter/total_rank`, `adapter.rank_pattern`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch.nn as nn

from lowrank_lab.adapters.init.base import Initializer
from lowrank_lab.adapters.lora import AUTO, LoraSpec

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def resolve_auto_rank(spec: Any, init: Initializer, teacher: Any, datamodule: Any) -> Any:
    """`spec` unchanged unless its lora_r is 'auto'; then a copy with lora_r = the largest picked rank and
    rank_pattern = layer -> r (lora_alpha 'auto' follows: alpha_pattern = the ranks, scaling 1 per layer).
    An init that cannot pick a rank fails with one line naming peft.lora_r."""
    if not isinstance(spec, LoraSpec) or spec.lora_r != AUTO:
        return spec
    ranks = init.pick_ranks(teacher, datamodule)  # layer name -> r (init=spectral: the energy rule)
    top = max(ranks.values())
    alpha = {"lora_alpha": top, "alpha_pattern": dict(ranks)} if spec.lora_alpha == AUTO else {}
    return dataclasses.replace(spec, lora_r=top, rank_pattern=dict(ranks), **alpha)


def rank_facts(spec: Any, model: nn.Module) -> tuple[dict[str, float], dict[str, str]]:
    """For a spec with a rank_pattern (peft.lora_r=auto): metric `adapter/total_rank` (Σ of the built layers'
    ranks) and param `adapter.rank_pattern` (JSON layer -> r, read off the wrapped model); else nothing.
    A pattern longer than MLflow's param limit is cut; the saved adapter_config.json holds it whole."""
    if not isinstance(spec, LoraSpec) or not spec.rank_pattern:
        return {}, {}
    from lowrank_lab.adapters.wrap import adapted_modules

    ranks = {
        name.removeprefix("base_model.model."): int(layer.r[layer.active_adapters[0]])
        for name, layer in adapted_modules(model).items()
    }
    pattern = json.dumps(ranks, separators=(",", ":"))[:MAX_PARAM_CHARS]
    return {"adapter/total_rank": float(sum(ranks.values()))}, {"adapter.rank_pattern": pattern}
