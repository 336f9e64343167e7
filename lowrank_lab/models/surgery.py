"""Layer surgery on a transformers model: find its list of transformer blocks, and derive a shallower student
that keeps some of them (DistilBERT-style init). A leaf: nothing else from lowrank_lab but errors."""

from __future__ import annotations

import copy

from torch import nn

from lowrank_lab.errors import bad_value


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, blocks): the first ModuleList in `model` with `config.num_hidden_layers` entries."""
    depth = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return name, module
    raise bad_value("model.student.keep_layers", None, f"{type(model).__name__} has no list of {depth} layers")


def derive_student(model: nn.Module, keep_layers: list[int]) -> nn.Module:
    """A copy of `model` keeping only the blocks in `keep_layers`; the teacher is untouched."""
    depth = model.config.num_hidden_layers
    keep = list(keep_layers)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= depth:
        raise bad_value("model.student.keep_layers", keep, f"ascending distinct layer indices in [0, {depth - 1}]")
    student = copy.deepcopy(model)
    name, layers = layer_list(student)
    kept = nn.ModuleList(layers[i] for i in keep)
    for new_index, block in enumerate(kept):  # decoder caches index layers by position
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
    parent_name, _, attr = name.rpartition(".")
    setattr(student.get_submodule(parent_name), attr, kept)
    student.config.num_hidden_layers = len(keep)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    return student
