"""Teacher / student pairs: a real pretrained student converted from ONNX (MiniLM-L3 for the MiniLM-L6 teacher),
students derived from a teacher by keeping a subset of its layers, and the check that a pair can be distilled."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lowrank_lab.errors import LabError, bad_value

if TYPE_CHECKING:
    from transformers import BertModel

    from lowrank_lab.models.backbone import Backbone

ONNX_PREFIX = "model.0.auto_model."  # sentence-transformers' export: module 0 of the pipeline is the BertModel


def onnx_bert_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """BertModel state dict from a BERT ONNX export. Named initializers map by name; each anonymous MatMul weight
    (in, out) is the one whose output feeds the Add that uses the layer's named bias, stored transposed (out, in)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {n[len(ONNX_PREFIX) :]: torch.from_numpy(a.copy()) for n, a in inits.items() if n.startswith(ONNX_PREFIX)}
    matmul_weight = {  # MatMul output name -> its initializer input (the weight)
        node.output[0]: next(i for i in node.input if i in inits)
        for node in graph.node
        if node.op_type == "MatMul" and any(i in inits for i in node.input)
    }
    for node in graph.node:
        if node.op_type != "Add":
            continue
        bias = next((i for i in node.input if i.startswith(ONNX_PREFIX) and i.endswith(".bias")), None)
        product = next((i for i in node.input if i in matmul_weight), None)
        if bias is not None and product is not None:
            key = bias[len(ONNX_PREFIX) : -len(".bias")] + ".weight"
            state[key] = torch.from_numpy(inits[matmul_weight[product]].T.copy())  # (in, out) -> (out, in)
    return state


def minilm_l3_from_onnx(onnx_path: str | Path) -> BertModel:
    """paraphrase-MiniLM-L3-v2 as a 3-layer BertModel (config: MiniLM-L6's, with 3 layers)."""
    from transformers import BertConfig, BertModel

    from lowrank_lab.models.convert import MINILM_L6_DIR, package_file

    state = onnx_bert_state_dict(onnx_path)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig.from_pretrained(package_file(*MINILM_L6_DIR), num_hidden_layers=layers)
    config.architectures = ["BertModel"]
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        details = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise LabError(f"onnx={onnx_path}: the graph does not map onto a BertModel ({details})")
    return model.eval()


def load_minilm_l3_from_onnx() -> BertModel:
    """The converted L3 model (converted once, cached under outputs/models/minilm-l3/)."""
    from transformers import BertModel

    from lowrank_lab.models.convert import converted

    return BertModel.from_pretrained(converted("minilm-l3"), add_pooling_layer=False).eval()


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer block list: the first ModuleList with `config.num_hidden_layers` entries."""
    depth = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return name, module
    raise bad_value("model.student.keep_layers", None, f"{type(model).__name__} has no list of {depth} layers")


def derive_student(model: nn.Module, keep_layers: list[int]) -> nn.Module:
    """A copy of `model` keeping only the blocks in `keep_layers` (DistilBERT-style init); the teacher is untouched."""
    depth = model.config.num_hidden_layers
    keep = list(keep_layers)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= depth:
        raise bad_value("model.student.keep_layers", keep, f"ascending distinct layer indices in [0, {depth - 1}]")
    student = copy.deepcopy(model)
    name, layers = _layer_list(student)
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


def _vocab(backbone: Backbone) -> dict[str, int] | None:
    from transformers import AutoTokenizer

    from lowrank_lab.models.resolve import resolve_name_or_path

    if backbone.tokenizer is None:
        return None  # vision: no tokenizer
    return AutoTokenizer.from_pretrained(resolve_name_or_path(backbone.tokenizer, "model.tokenizer")).get_vocab()


def _label_space(backbone: Backbone) -> tuple[str, int]:
    """(head, size of what the head predicts): vocabulary size for causal LMs, num_labels otherwise."""
    config = backbone.model.config
    size = config.vocab_size if backbone.head == "causal_lm" else config.num_labels
    return backbone.head, int(size)


def check_pair(teacher: Backbone, student: Backbone) -> None:
    """A pair can be distilled only with the same tokenizer vocabulary and the same label space; else one line."""
    if _label_space(teacher) != _label_space(student):
        raise LabError(
            f"model.teacher={teacher.name_or_path!r}: label space (head, size) {_label_space(teacher)} differs from "
            f"the student's {_label_space(student)}; pick a teacher with the student's head and labels"
        )
    if teacher.tokenizer != student.tokenizer and _vocab(teacher) != _vocab(student):
        raise LabError(
            f"model.teacher={teacher.name_or_path!r}: tokenizer {teacher.tokenizer!r} has a different vocabulary "
            f"from the student's {student.tokenizer!r}; pick a teacher of the same family"
        )


def load_teacher(student: Backbone, num_labels: int) -> Backbone:
    """Load the teacher named by the `model.teacher` sub-node (defaults: the student's head) and check the pair."""
    from lowrank_lab.models.backbone import load_backbone

    if not student.teacher:
        raise bad_value("model.teacher", None, "a sub-node with the teacher's name_or_path (see conf/model/*pair*)")
    spec = {"head": student.head, **dict(student.teacher)}
    teacher = load_backbone(**spec, num_labels=num_labels)
    check_pair(teacher, student)
    return teacher
