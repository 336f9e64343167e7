"""LoRA adapters shared between a teacher and a student encoder (SLAD): layers mapped by relative depth, then

- `full`: each mapped, same-shaped student layer uses the teacher's very adapter modules (lora_A, lora_B): one
  set of parameters, so a gradient step moves both encoders;
- `core`: ΔW = scaling·B·C·A with an r×r core C shared by the pair and A, B per model (C starts at I);
- `none`: separate adapters.

Each encoder still exports as a plain peft adapter: `export_state_dict` folds B·C into `lora_B` for `core`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from lowrank_lab.errors import bad_value
from lowrank_lab.models.surgery import layer_list

SHARE_MODES = ("full", "core", "none")
LayerMap = list[tuple[int, int]]  # [(teacher layer, student layer), …]


def map_layers(rule: str | Sequence[Sequence[int]], n_teacher: int, n_student: int) -> LayerMap:
    """`uniform`: student layer j ↔ teacher layer ⌊j·L_T/L_S⌋ (the layers a keep-every-k student was cut from);
    `last`: the last layers only; or explicit [[teacher, student], …] pairs (each student layer at most once)."""
    if rule == "uniform":
        return [(j * n_teacher // n_student, j) for j in range(n_student)]
    if rule == "last":
        return [(n_teacher - 1, n_student - 1)]
    allowed = f"uniform, last, or [[teacher, student], …] with teacher in [0, {n_teacher - 1}], student in [0, "
    allowed += f"{n_student - 1}], each student layer once"
    if isinstance(rule, str):
        raise bad_value("method.layer_map", rule, allowed)
    pairs = [tuple(int(k) for k in p) for p in rule]
    ok = bool(pairs) and all(len(p) == 2 and 0 <= p[0] < n_teacher and 0 <= p[1] < n_student for p in pairs)
    if not ok or len({p[1] for p in pairs}) != len(pairs):
        raise bad_value("method.layer_map", [list(p) for p in pairs], allowed)
    return pairs


def num_layers(model: nn.Module) -> int:
    return int(base_of(model).config.num_hidden_layers)


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def adapters_by_layer(model: nn.Module) -> dict[int, dict[str, LoraLayer]]:
    """block index -> {module path inside the block (e.g. `attention.self.query`): LoRA layer}."""
    base = base_of(model)
    blocks, _ = layer_list(base)
    found: dict[int, dict[str, LoraLayer]] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and name.startswith(blocks + "."):
            index, _, inner = name[len(blocks) + 1 :].partition(".")
            found.setdefault(int(index), {})[inner] = module
    return found


class CoreLinear(nn.Module):
    """lora_B with a shared core: h (…, r) -> h·(B·C)ᵀ (…, d_out); B (d_out, r) own, C (r, r) shared.
    `weight` is the folded B·C, so peft's merge / delta-weight code sees an ordinary lora_B."""

    def __init__(self, b: torch.Tensor, core: nn.Linear) -> None:
        super().__init__()
        self.b = nn.Parameter(b.detach().clone())
        self.core = core

    @property
    def weight(self) -> torch.Tensor:
        return self.b @ self.core.weight  # (d_out, r) @ (r, r)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)


@dataclass
class SharedPair:
    """One mapped module pair: teacher and student LoRA layers and what they share."""

    name: str  # e.g. `3->1:attention.self.query`
    teacher: LoraLayer
    student: LoraLayer
    core: nn.Linear | None = None  # share=core only


def share_adapters(
    teacher: nn.Module, student: nn.Module, pairs: LayerMap, mode: str, adapter: str = "default"
) -> list[SharedPair]:
    """Tie the adapters of every mapped (teacher layer, student layer) module pair in place (see module doc)."""
    if mode not in SHARE_MODES:
        raise bad_value("method.share", mode, f"one of {list(SHARE_MODES)}")
    if mode == "none":
        return []
    t_layers, s_layers = adapters_by_layer(teacher), adapters_by_layer(student)
    if not t_layers or not s_layers:
        raise bad_value("method.share", mode, "none unless both encoders carry LoRA adapters (peft=lora, …)")
    shared = []
    for i, j in pairs:
        for inner, s_layer in s_layers.get(j, {}).items():
            t_layer = t_layers.get(i, {}).get(inner)
            if t_layer is None or adapter not in s_layer.lora_A or adapter not in t_layer.lora_A:
                continue
            pair = SharedPair(f"{i}->{j}:{inner}", t_layer, s_layer)
            if mode == "full":
                _tie(pair, adapter)
            else:
                pair.core = _tie_core(pair, adapter)
            shared.append(pair)
    if not shared:
        raise bad_value("method.layer_map", [list(p) for p in pairs], "pairs of layers that both carry adapters")
    return shared


def _tie(pair: SharedPair, adapter: str) -> None:
    t, s = pair.teacher, pair.student
    shapes = (t.lora_A[adapter].weight.shape, t.lora_B[adapter].weight.shape)
    if shapes != (s.lora_A[adapter].weight.shape, s.lora_B[adapter].weight.shape):
        raise bad_value("method.share", "full", f"core (or none): {pair.name} has different shapes in the two models")
    s.lora_A[adapter], s.lora_B[adapter] = t.lora_A[adapter], t.lora_B[adapter]  # the very same modules


def _tie_core(pair: SharedPair, adapter: str) -> nn.Linear:
    t, s = pair.teacher, pair.student
    r = t.lora_A[adapter].weight.shape[0]
    if s.lora_A[adapter].weight.shape[0] != r:
        raise bad_value("method.share", "core", f"one rank for both models ({pair.name} differs)")
    b = t.lora_B[adapter].weight
    core = nn.Linear(r, r, bias=False, device=b.device, dtype=b.dtype)
    nn.init.eye_(core.weight)  # ΔW = B·I·A at step 0: plain LoRA
    t.lora_B[adapter] = CoreLinear(t.lora_B[adapter].weight, core)
    s.lora_B[adapter] = CoreLinear(s.lora_B[adapter].weight, core)
    return core


# ----- export: each encoder as a plain peft adapter ------------------------------------------------------------
def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every CoreLinear at `p` replaced by `p.weight` = B·C (peft's lora_B)."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, CoreLinear):
            state.pop(f"{name}.b")
            state.pop(f"{name}.core.weight")
            state[f"{name}.weight"] = module.weight.detach().clone()
    return state


def save_encoder(model: nn.Module, directory: str | Path) -> None:
    """Save one encoder: a peft adapter (folded) loadable by PeftModel.from_pretrained, or the full model."""
    if isinstance(model, PeftModel):
        model.save_pretrained(str(directory), state_dict=export_state_dict(model))
    else:
        model.save_pretrained(str(directory))


def unique_trainable(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(name -> tensor, each trainable parameter once; alias -> that name, for every other name of a shared one)."""
    first: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
            tensors[name] = p.detach().cpu().contiguous()
    return tensors, aliases


def save_joint(module: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """One safetensors file with each trainable parameter once; shared ones' other names in the metadata."""
    import json

    from safetensors.torch import save_file

    tensors, aliases = unique_trainable(module)
    meta = {"aliases": json.dumps(aliases), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    save_file(tensors, str(path), metadata=meta)
