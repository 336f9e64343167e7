"""Backbone loading: packaged weights, converted packages (GGUF, ONNX), bases pre-trained here, local dirs, hub ids
(cache only when offline), tiny random configs. Imports run one way: resolve ← convert ← pretrain ← backbone ←
pairs; surgery and segmentation are leaves."""

from lowrank_lab.models.backbone import HEADS, Backbone, load_backbone, resolve_name_or_path

__all__ = ["HEADS", "Backbone", "load_backbone", "resolve_name_or_path"]
