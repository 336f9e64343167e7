"""Backbone loading: packaged weights, local dirs, hub ids (cache only when offline), tiny random configs."""

from lowrank_lab.models.backbone import Backbone, load_backbone
from lowrank_lab.models.resolve import resolve_name_or_path

__all__ = ["Backbone", "load_backbone", "resolve_name_or_path"]
