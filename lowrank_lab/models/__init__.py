"""Backbone loading: packaged weights, converted packages (GGUF, ONNX), local dirs, hub ids (cache only when
offline), tiny random configs; teacher/student pairs."""

from lowrank_lab.models.backbone import HEADS, Backbone, load_backbone
from lowrank_lab.models.resolve import resolve_name_or_path

__all__ = ["HEADS", "Backbone", "load_backbone", "resolve_name_or_path"]
